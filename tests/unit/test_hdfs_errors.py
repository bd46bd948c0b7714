"""How a NameNode error that hdfs-native passes on raw reads: one line, of its Java class."""

from __future__ import annotations

import pytest

from trialsync._stores.hdfs_rpc_io import rpc_error

TRACE = (
    r"\n\tat org.apache.hadoop.hdfs.server.namenode.FSPermissionChecker.check"
    r"(FSPermissionChecker.java:512)\n\tat org.apache.hadoop.ipc.Server$Handler.run"
    r"(Server.java:3198)\n"
)


def raw(java: str, message: str) -> RuntimeError:
    """What hdfs-native raises: Rust's Debug of its RPCError (the strings escaped)."""
    return RuntimeError(f'RPCError("{java}", "{message}{TRACE}")')


@pytest.mark.parametrize(
    ("java", "message", "kind", "says"),
    [
        pytest.param(
            "org.apache.hadoop.security.AccessControlException",
            r"Permission denied: user=alice, access=WRITE, inode=\"/exp\":hdfs:supergroup:drwx",
            PermissionError,
            'AccessControlException: Permission denied: user=alice, access=WRITE, inode="/exp"'
            ":hdfs:supergroup:drwx",
            id="a denied permission",
        ),
        pytest.param(
            "org.apache.hadoop.security.authorize.AuthorizationException",
            "User: svc is not allowed to impersonate alice",
            PermissionError,
            "AuthorizationException: User: svc is not allowed to impersonate alice",
            id="any refusal of who the client is",
        ),
        pytest.param(
            "org.apache.hadoop.security.AccessControlException",
            "/exp/f (is not a directory)",
            OSError,
            "AccessControlException: /exp/f (is not a directory)",
            id="a path through a file is no denial",
        ),
        pytest.param(
            "org.apache.hadoop.hdfs.protocol.QuotaExceededException",
            "The DiskSpace quota of /exp is exceeded",
            OSError,
            "QuotaExceededException: The DiskSpace quota of /exp is exceeded",
            id="another error, named for its class",
        ),
        pytest.param(
            # A backslash before an "n" in a path is no line break; \u{..} is a character.
            "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
            r"`/exp\\new caf\u{e9}` is non empty",
            OSError,
            "PathIsNotEmptyDirectoryException: `/exp\\new café` is non empty",
            id="unescaped before its first line is taken",
        ),
    ],
)
def test_a_namenode_error_is_one_line_of_its_java_class(
    java: str, message: str, kind: type[OSError], says: str
) -> None:
    error = rpc_error(raw(java, message))
    assert type(error) is kind
    assert str(error) == says


def test_an_error_that_is_no_rpc_error_is_left_alone() -> None:
    assert rpc_error(RuntimeError("the connection was reset")) is None
