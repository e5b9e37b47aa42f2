"""Git's smart HTTP protocol for the sandbox forge: clone, fetch and push at ``/{owner}/{repo}.git``.

``ForgejoSandbox`` serves ``GitHttp.app`` on the same port as the REST API. Each request is
authenticated as Forgejo does for git (HTTP Basic with the login and an API token as password,
or the token as user name; an ``Authorization: token`` header works too), checked against the
repository's access (reading a public repository needs no credentials, pushing needs write
access) and handed to ``git http-backend`` as a CGI. A push runs under the state lock and ends
with ``ForgeState.sync_pushed``, so the branches, commits and webhooks follow it at once.
"""

from __future__ import annotations

import base64
import binascii
import functools
import subprocess
from pathlib import Path

import bottle  # type: ignore[import-untyped]  # bottle ships no type information

from reconciler.sandbox.gitstore import GIT_TIMEOUT, GitStorage, git_environment
from reconciler.sandbox.state import Access, ForgeState, Repo, Unauthorized, User

UPLOAD_PACK = "git-upload-pack"
RECEIVE_PACK = "git-receive-pack"
# Forgejo's challenge when OAuth2 is off (routers/web/repo/githttp.go).
CHALLENGE = 'Basic realm="Gitea (Basic Auth)"'
# Request headers passed on to the backend as HTTP_* variables: the protocol version and the
# request body's encoding (git gzips large fetch negotiations).
_FORWARDED_HEADERS = ("Git-Protocol", "Content-Encoding")


@functools.cache
def http_backend() -> Path:
    """Where this machine's ``git http-backend`` lives (``git --exec-path``)."""
    done = subprocess.run(
        ["git", "--exec-path"], capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT
    )
    return Path(done.stdout.strip()) / "git-http-backend"


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
    answer = bottle.HTTPResponse(body=f"{text}\n".encode(), status=status, headers=headers or {})
    answer.content_type = "text/plain; charset=utf-8"
    return answer


def parse_cgi_output(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI answer into status, headers and body (``Status:`` defaults to 200)."""
    ends = [(at, sep) for sep in (b"\r\n\r\n", b"\n\n") if (at := output.find(sep)) >= 0]
    if not ends:
        raise ValueError("the CGI answer has no end of headers")
    end, separator = min(ends)
    head = output[:end].decode("latin-1")
    body = output[end + len(separator) :]
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "status":
            status = int(value.strip().split()[0])
        elif name.strip():
            headers.append((name.strip(), value.strip()))
    return status, headers, body


class GitHttp:
    """The WSGI application serving each repository's bare git repository over smart HTTP."""

    def __init__(self, state: ForgeState, storage: GitStorage) -> None:
        self.state = state
        self.storage = storage
        self.app = bottle.Bottle()
        for method in ("GET", "POST"):
            self.app.route("/<owner>/<name>.git/<rest:path>", method, self._serve)

    def _serve(self, owner: str, name: str, rest: str) -> bottle.HTTPResponse:
        request = bottle.request
        if rest == "info/refs":
            service = request.query.get("service", "")
            if service and service not in (UPLOAD_PACK, RECEIVE_PACK):
                return _plain(400, f"unknown git service {service!r}")
        else:
            # The smart protocol's two endpoints; anything else is a dumb-protocol read.
            service = rest if rest in (UPLOAD_PACK, RECEIVE_PACK) else ""
        pushing = service == RECEIVE_PACK
        with self.state.lock:
            repo = self._find(f"{owner}/{name}")
            if repo is None:
                return _plain(404, "Repository not found")
            try:
                user = self._authenticate(request.get_header("Authorization", ""))
            except Unauthorized:
                return _plain(401, "Unauthorized", {"WWW-Authenticate": CHALLENGE})
            needed = Access.WRITE if pushing else Access.READ
            if user is None and (pushing or repo.private):
                return _plain(401, "Unauthorized", {"WWW-Authenticate": CHALLENGE})
            if user is not None:
                access = self.state.access(repo, user)
                if access < Access.READ:
                    return _plain(404, "Repository not found")
                if access < needed:
                    return _plain(403, "User permission denied")
            login = user.login if user is not None else ""
            path = self.storage.relative_path(repo.full_name)
            repo.bare.materialize()
        body = request.body.read() if request.method == "POST" else b""
        if pushing and request.method == "POST":
            # Refs move only here: the push and the sync that follows it hold the state lock,
            # so REST answers never see a branch the index does not know yet, and no helper
            # moves a branch between the repository catching up and git updating it.
            with self.state.lock:
                repo.bare.materialize()
                answer = self._run_backend(f"/{path}/{rest}", body=body, user=login)
                assert user is not None
                self.state.sync_pushed(repo, user)
                return answer
        return self._run_backend(f"/{path}/{rest}", body=body, user=login)

    def _find(self, full_name: str) -> Repo | None:
        for known, repo in self.state.repos.items():
            if known.lower() == full_name.lower():
                return repo
        return None

    def _authenticate(self, header: str) -> User | None:
        """The user the credentials name; None without any; Unauthorized when they are wrong."""
        scheme, _, credential = header.strip().partition(" ")
        if not header.strip():
            return None
        if scheme.lower() in ("token", "bearer"):
            return self.state.user_by_token(credential.strip())
        if scheme.lower() != "basic":
            raise Unauthorized("unsupported authorization scheme")
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed basic credentials") from None
        login, _, secret = decoded.partition(":")
        # Like Forgejo, a token as password stands for its owner whatever the user name says;
        # failing that, the user name may be the token itself (with any password).
        for candidate in (secret, login):
            user = self.state.tokens.get(candidate) if candidate else None
            if user is not None:
                return user
        raise Unauthorized("wrong user name or token")

    def _run_backend(self, path_info: str, *, body: bytes, user: str) -> bottle.HTTPResponse:
        request = bottle.request
        environ = git_environment(self.storage.root)
        environ.update(
            {
                "GIT_PROJECT_ROOT": str(self.storage.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "PATH_INFO": path_info,
                "REQUEST_METHOD": request.method,
                "QUERY_STRING": request.query_string,
                "CONTENT_TYPE": request.content_type or "",
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": user,
                "REMOTE_ADDR": request.remote_addr or "127.0.0.1",
            }
        )
        for header in _FORWARDED_HEADERS:
            value = request.get_header(header)
            if value:
                environ["HTTP_" + header.upper().replace("-", "_")] = value
        try:
            done = subprocess.run(
                [str(http_backend())],
                input=body,
                env=environ,
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
            status, headers, payload = parse_cgi_output(done.stdout)
        except (subprocess.TimeoutExpired, ValueError) as failure:
            return _plain(500, f"git http-backend failed: {failure}")
        answer = bottle.HTTPResponse(body=payload, status=status)
        for name, value in headers:
            answer.set_header(name, value)
        return answer
