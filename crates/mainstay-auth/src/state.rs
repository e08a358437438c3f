//! The replicated auth state and the permission checks over it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::ranges::{Interval, covers};

/// The name of the root user and of the root role (etcd's fixed names).
pub const ROOT: &str = "root";

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionKind {
    /// Range and watch.
    Read,
    /// Put and delete.
    Write,
    /// Both.
    ReadWrite,
}

impl PermissionKind {
    /// Whether a permission of this kind allows an operation of kind `wanted`
    /// (`Read` or `Write`).
    pub fn allows(self, wanted: PermissionKind) -> bool {
        self == PermissionKind::ReadWrite || self == wanted
    }
}

/// A role's permission on a key or key range (etcd's range rules).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it allows.
    pub kind: PermissionKind,
    /// First key.
    pub key: Vec<u8>,
    /// Empty: the key alone; `"\0"`: every key from `key` on; else `[key, range_end)`.
    pub range_end: Vec<u8>,
}

/// A user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The name.
    pub name: String,
    /// The bcrypt hash of the password; `None` for a user created without one.
    pub password: Option<String>,
    /// Created with `no_password`: may not log in with a password (its
    /// identity comes from a client certificate's common name).
    pub no_password: bool,
    /// Granted roles, sorted, each once.
    pub roles: Vec<String>,
}

impl User {
    /// Whether the user holds the root role (all permissions, administration).
    pub fn is_root(&self) -> bool {
        self.roles
            .binary_search_by(|r| r.as_str().cmp(ROOT))
            .is_ok()
    }
}

/// A role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The name.
    pub name: String,
    /// Permissions, sorted by key (etcd's order), at most one per key and range end.
    pub permissions: Vec<Permission>,
}

/// Who a request acts for, as the member that received it established: the
/// user and the auth revision at that time. A request with no identity has
/// the empty user and revision 0 (refused while auth is on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The user name ("" for none).
    pub user: String,
    /// The auth revision the identity was established at (0 for none).
    pub revision: u64,
}

impl Caller {
    /// No identity (auth off, or no token and no client certificate).
    pub fn anonymous() -> Caller {
        Caller::default()
    }
}

/// The auth state every replica holds. See the crate docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub(crate) enabled: bool,
    pub(crate) revision: u64,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    /// Disabled, no users or roles, revision 1 (etcd's first revision).
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

impl AuthState {
    /// The state as a snapshot file holds it (users and roles as stored, the
    /// revision as recorded): a restored cluster starts where the old one was.
    pub fn from_parts(
        enabled: bool,
        revision: u64,
        users: Vec<User>,
        roles: Vec<Role>,
    ) -> AuthState {
        AuthState {
            enabled,
            revision,
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            roles: roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }

    /// Whether auth is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: it moves on every change of users, roles or
    /// permissions and on disable.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// May `caller` administer (auth management, membership, maintenance)?
    /// Always while auth is off; else only a user with the root role (etcd's
    /// `IsAdminPermitted`).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = self
            .users
            .get(&caller.user)
            .ok_or(AuthError::UserNotFound)?;
        if user.is_root() {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// May `caller` do an operation of `kind` (`Read` or `Write`) on the keys
    /// `key`/`range_end` name? Always while auth is off; else the identity must
    /// be from the current auth revision and the user's roles must cover every
    /// key of the range (etcd's `isOpPermitted`).
    pub fn check_op(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        kind: PermissionKind,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        self.check_identity(caller)?;
        let user = self
            .users
            .get(&caller.user)
            .ok_or(AuthError::PermissionDenied)?;
        if user.is_root() || covers(&self.granted(user, kind), &Interval::of(key, range_end)) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// May `caller` read a user's roles? An administrator any user's, anyone
    /// their own (etcd's UserGet rule).
    pub fn check_user_get(&self, caller: &Caller, name: &str) -> Result<(), AuthError> {
        match self.check_admin(caller) {
            Err(_) if caller.user == name && !name.is_empty() => Ok(()),
            other => other,
        }
    }

    /// May `caller` read a role's permissions? An administrator any role,
    /// anyone a role they hold (etcd's RoleGet rule).
    pub fn check_role_get(&self, caller: &Caller, role: &str) -> Result<(), AuthError> {
        match self.check_admin(caller) {
            Err(error) => {
                let holds = self.users.get(&caller.user).is_some_and(|user| {
                    user.roles
                        .binary_search_by(|r| r.as_str().cmp(role))
                        .is_ok()
                });
                if holds { Ok(()) } else { Err(error) }
            }
            Ok(()) => Ok(()),
        }
    }

    /// May `caller` make requests that need no key permission but an
    /// authenticated user (lease and status calls)? Always while auth is off;
    /// else an identity of the current revision naming an existing user.
    pub fn check_user(&self, caller: &Caller) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        self.check_identity(caller)?;
        if self.users.contains_key(&caller.user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    fn check_identity(&self, caller: &Caller) -> Result<(), AuthError> {
        if caller.revision == 0 || caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if caller.revision < self.revision {
            return Err(AuthError::OldRevision);
        }
        Ok(())
    }

    /// The password hash to check a login against, and the revision it was
    /// read at (etcd's `CheckPassword`, before the costly comparison).
    pub fn login_hash(&self, name: &str) -> Result<(String, u64), AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
        match (&user.password, user.no_password) {
            (Some(hash), false) => Ok((hash.clone(), self.revision)),
            _ => Err(AuthError::AuthFailed),
        }
    }

    /// Every interval the user's roles grant for operations of `kind`.
    fn granted(&self, user: &User, kind: PermissionKind) -> Vec<Interval> {
        user.roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| &role.permissions)
            .filter(|permission| permission.kind.allows(kind))
            .filter_map(|permission| Interval::granted(&permission.key, &permission.range_end))
            .collect()
    }
}
