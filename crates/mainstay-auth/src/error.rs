//! Why an auth request or a permission check failed. The API layer maps each
//! variant to etcd's gRPC code and exact message; nothing here knows gRPC.

use serde::{Deserialize, Serialize};

/// An auth failure; the auth state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AuthError {
    /// AuthEnable without a `root` user.
    #[error("root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while `root` lacks the `root` role.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of a taken name.
    #[error("user name already exists")]
    UserAlreadyExist,
    /// An empty user name, or a request without any identity while auth is on.
    #[error("user name is empty")]
    UserEmpty,
    /// A user that does not exist.
    #[error("user name not found")]
    UserNotFound,
    /// RoleAdd of a taken name.
    #[error("role name already exists")]
    RoleAlreadyExist,
    /// A role that does not exist.
    #[error("role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("role name is empty")]
    RoleEmpty,
    /// Wrong user or password, or a login of a user without a password.
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The caller lacks the permission.
    #[error("permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// RoleGrantPermission without a permission.
    #[error("permission not given")]
    PermissionNotGiven,
    /// Authenticate while auth is disabled.
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    /// The request was authorised under an older auth revision.
    #[error("revision of auth store is old")]
    OldRevision,
    /// An unknown, expired or forged token.
    #[error("invalid auth token")]
    InvalidAuthToken,
    /// Deleting root, the root role, or revoking root's root role while enabled.
    #[error("invalid auth management")]
    InvalidAuthMgmt,
}
