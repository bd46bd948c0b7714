"""How a NameNode error that hdfs-native passes on raw reads: one line, of its Java class."""

from __future__ import annotations

from trialsync._stores.hdfs_rpc_io import rpc_error

TRACE = (
    r"\n\tat org.apache.hadoop.hdfs.server.namenode.FSPermissionChecker.check"
    r"(FSPermissionChecker.java:512)\n\tat org.apache.hadoop.ipc.Server$Handler.run"
    r"(Server.java:3198)\n"
)


def raw(java: str, message: str) -> RuntimeError:
    """What hdfs-native raises: Rust's Debug of its RPCError (the strings escaped)."""
    return RuntimeError(f'RPCError("{java}", "{message}{TRACE}")')


def test_a_denied_permission_is_a_permission_error_of_one_line() -> None:
    message = (
        r"Permission denied: user=alice, access=WRITE, inode=\"/exp\":hdfs:supergroup:drwxr-xr-x"
    )
    error = rpc_error(raw("org.apache.hadoop.security.AccessControlException", message))
    assert type(error) is PermissionError
    assert str(error) == (
        "AccessControlException: Permission denied: user=alice, access=WRITE, "
        'inode="/exp":hdfs:supergroup:drwxr-xr-x'
    )


def test_another_namenode_error_is_an_os_error_named_for_its_class() -> None:
    java = "org.apache.hadoop.hdfs.protocol.QuotaExceededException"
    error = rpc_error(raw(java, "The DiskSpace quota of /exp is exceeded"))
    assert type(error) is OSError
    assert str(error) == "QuotaExceededException: The DiskSpace quota of /exp is exceeded"


def test_an_error_that_is_no_rpc_error_is_left_alone() -> None:
    assert rpc_error(RuntimeError("the connection was reset")) is None


def test_any_refusal_of_who_the_client_is_is_a_permission_error() -> None:
    java = "org.apache.hadoop.security.authorize.AuthorizationException"
    error = rpc_error(raw(java, "User: svc is not allowed to impersonate alice"))
    assert type(error) is PermissionError
    assert str(error) == "AuthorizationException: User: svc is not allowed to impersonate alice"


def test_a_path_through_a_file_is_no_permission_error() -> None:
    java = "org.apache.hadoop.security.AccessControlException"
    error = rpc_error(raw(java, "/exp/f (is not a directory)"))
    assert type(error) is OSError
    assert str(error) == "AccessControlException: /exp/f (is not a directory)"


def test_the_message_is_unescaped_before_its_first_line_is_taken() -> None:
    # A backslash before an "n" in a path is no line break; \u{..} is a character.
    java = "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException"
    error = rpc_error(raw(java, r"`/exp\\new caf\u{e9}` is non empty"))
    assert str(error) == "PathIsNotEmptyDirectoryException: `/exp\\new café` is non empty"
