//! What an auth request does to the auth state (etcd's `authStore` rules).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::state::{AuthState, Permission, ROOT, Role, User};

/// An auth change as the Raft log carries it. Passwords are bcrypt hashes,
/// computed by the member the client reached; a plain password never enters
/// the log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// Turn auth on (needs root with the root role).
    Enable,
    /// Turn auth off.
    Disable,
    /// Create a user.
    UserAdd {
        /// The name.
        name: String,
        /// The password's bcrypt hash; `None` with `no_password`.
        password: Option<String>,
        /// A user that cannot log in with a password.
        no_password: bool,
    },
    /// Delete a user.
    UserDelete {
        /// The name.
        name: String,
    },
    /// Set a user's password.
    UserChangePassword {
        /// The name.
        name: String,
        /// The new password's bcrypt hash.
        password: String,
    },
    /// Grant a role to a user.
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Revoke a role from a user.
    UserRevokeRole {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// Create a role.
    RoleAdd {
        /// The name.
        name: String,
    },
    /// Delete a role (and take it from every user).
    RoleDelete {
        /// The name.
        name: String,
    },
    /// Grant (or change the kind of) a permission.
    RoleGrantPermission {
        /// The role.
        name: String,
        /// The permission; `None` is refused.
        permission: Option<Permission>,
    },
    /// Revoke the permission with exactly this key and range end.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// Its key.
        key: Vec<u8>,
        /// Its range end.
        range_end: Vec<u8>,
    },
    /// A login whose password the receiving member checked at
    /// `checked_revision`; `token` is the simple token's random part, if the
    /// member issues simple tokens (every member learns it from the log).
    Authenticate {
        /// The user.
        name: String,
        /// The auth revision the password was checked at.
        checked_revision: u64,
        /// The simple token's random part ("" for JWT).
        token: String,
    },
}

/// Names and kinds only: no password hash or token in a log line.
impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthRequest::Enable => write!(f, "auth-enable"),
            AuthRequest::Disable => write!(f, "auth-disable"),
            AuthRequest::UserAdd { name, .. } => write!(f, "user-add({name})"),
            AuthRequest::UserDelete { name } => write!(f, "user-delete({name})"),
            AuthRequest::UserChangePassword { name, .. } => write!(f, "user-passwd({name})"),
            AuthRequest::UserGrantRole { user, role } => write!(f, "user-grant({user}, {role})"),
            AuthRequest::UserRevokeRole { name, role } => write!(f, "user-revoke({name}, {role})"),
            AuthRequest::RoleAdd { name } => write!(f, "role-add({name})"),
            AuthRequest::RoleDelete { name } => write!(f, "role-delete({name})"),
            AuthRequest::RoleGrantPermission { name, .. } => write!(f, "role-grant({name})"),
            AuthRequest::RoleRevokePermission { role, .. } => write!(f, "role-revoke({role})"),
            AuthRequest::Authenticate { name, .. } => write!(f, "authenticate({name})"),
        }
    }
}

/// What an applied auth request answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthReply {
    /// Done (or nothing to do, as etcd answers a repeated enable or grant).
    Done,
    /// A login was accepted at this auth revision.
    Authenticated {
        /// The user.
        user: String,
        /// The auth revision (what a JWT carries).
        revision: u64,
    },
}

impl AuthRequest {
    /// Whether only an administrator (root, while auth is on) may make it:
    /// every request but a login.
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthRequest::Authenticate { .. })
    }
}

/// A permission names a non-empty key and either no end, the from-key end
/// `"\0"`, or an end after the key (etcd 3.5's `isValidPermissionRange`).
pub fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

impl AuthState {
    fn bump(&mut self) -> Result<AuthReply, AuthError> {
        self.revision += 1;
        Ok(AuthReply::Done)
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, AuthError> {
        self.users.get_mut(name).ok_or(AuthError::UserNotFound)
    }

    /// Applies one auth request. Pure; a refused request changes nothing.
    /// Every effective change but enable moves the auth revision (etcd).
    pub fn apply(&mut self, request: &AuthRequest) -> Result<AuthReply, AuthError> {
        match request {
            AuthRequest::Enable => {
                if self.enabled {
                    return Ok(AuthReply::Done);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.is_root() {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                Ok(AuthReply::Done)
            }
            AuthRequest::Disable => {
                if !self.enabled {
                    return Ok(AuthReply::Done);
                }
                self.enabled = false;
                self.bump()
            }
            AuthRequest::UserAdd {
                name,
                password,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    name: name.clone(),
                    password: if *no_password { None } else { password.clone() },
                    no_password: *no_password,
                    roles: Vec::new(),
                };
                self.users.insert(name.clone(), user);
                self.bump()
            }
            AuthRequest::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
                self.bump()
            }
            AuthRequest::UserChangePassword { name, password } => {
                self.user_mut(name)?.password = Some(password.clone());
                self.bump()
            }
            AuthRequest::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                // The root role may be granted before it exists (etcd).
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let roles = &mut self.user_mut(user)?.roles;
                match roles.binary_search(role) {
                    Ok(_) => Ok(AuthReply::Done),
                    Err(at) => {
                        roles.insert(at, role.clone());
                        self.bump()
                    }
                }
            }
            AuthRequest::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let roles = &mut self.user_mut(name)?.roles;
                let at = roles
                    .binary_search(role)
                    .map_err(|_| AuthError::RoleNotGranted)?;
                roles.remove(at);
                self.bump()
            }
            AuthRequest::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(
                    name.clone(),
                    Role {
                        name: name.clone(),
                        permissions: Vec::new(),
                    },
                );
                self.bump()
            }
            AuthRequest::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    if let Ok(at) = user.roles.binary_search(name) {
                        user.roles.remove(at);
                    }
                }
                self.bump()
            }
            AuthRequest::RoleGrantPermission { name, permission } => {
                let permission = permission.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                if !valid_permission_range(&permission.key, &permission.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                match role
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end)
                {
                    Some(existing) => existing.kind = permission.kind,
                    None => {
                        // After every permission with a key at or before this
                        // one: etcd's stable order by key.
                        let at = role
                            .permissions
                            .partition_point(|p| p.key <= permission.key);
                        role.permissions.insert(at, permission.clone());
                    }
                }
                self.bump()
            }
            AuthRequest::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let role = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = role.permissions.len();
                role.permissions
                    .retain(|p| p.key != *key || p.range_end != *range_end);
                if role.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                self.bump()
            }
            AuthRequest::Authenticate {
                name,
                checked_revision,
                ..
            } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
                if user.no_password || user.password.is_none() {
                    return Err(AuthError::AuthFailed);
                }
                // The password was checked against an older state (it may
                // have changed since): the member checks again.
                if *checked_revision != self.revision {
                    return Err(AuthError::OldRevision);
                }
                Ok(AuthReply::Authenticated {
                    user: name.clone(),
                    revision: self.revision,
                })
            }
        }
    }
}
