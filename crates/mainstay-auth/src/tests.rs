use std::time::Duration;

use proptest::prelude::*;

use crate::*;

fn perm(kind: PermissionKind, key: &str, end: &str) -> Permission {
    Permission {
        kind,
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
    }
}

fn apply_all(state: &mut AuthState, requests: &[AuthRequest]) {
    for request in requests {
        state
            .apply(request)
            .unwrap_or_else(|e| panic!("{request:?}: {e}"));
    }
}

fn user_add(name: &str) -> AuthRequest {
    AuthRequest::UserAdd {
        name: name.into(),
        password: Some(format!("hash-of-{name}")),
        no_password: false,
    }
}

fn grant_role(user: &str, role: &str) -> AuthRequest {
    AuthRequest::UserGrantRole {
        user: user.into(),
        role: role.into(),
    }
}

/// root (with the root role), alice with role rw on [a, c) and read on "z",
/// bob with no role; auth enabled.
fn enabled_state() -> AuthState {
    let mut state = AuthState::default();
    apply_all(
        &mut state,
        &[
            user_add("root"),
            grant_role("root", "root"),
            user_add("alice"),
            user_add("bob"),
            AuthRequest::RoleAdd { name: "rw".into() },
            AuthRequest::RoleGrantPermission {
                name: "rw".into(),
                permission: Some(perm(PermissionKind::ReadWrite, "a", "c")),
            },
            AuthRequest::RoleGrantPermission {
                name: "rw".into(),
                permission: Some(perm(PermissionKind::Read, "z", "")),
            },
            grant_role("alice", "rw"),
            AuthRequest::Enable,
        ],
    );
    state
}

#[test]
fn management_rules_answer_as_etcd() {
    // Goal: each refusal of etcd's auth store, in a table; a refusal changes nothing.
    use AuthError::*;
    let cases: Vec<(&str, AuthRequest, AuthError)> = vec![
        (
            "empty user",
            AuthRequest::UserAdd {
                name: "".into(),
                password: None,
                no_password: false,
            },
            UserEmpty,
        ),
        ("taken user", user_add("alice"), UserAlreadyExist),
        (
            "delete missing",
            AuthRequest::UserDelete {
                name: "carol".into(),
            },
            UserNotFound,
        ),
        (
            "delete root while on",
            AuthRequest::UserDelete {
                name: "root".into(),
            },
            InvalidAuthMgmt,
        ),
        (
            "passwd missing",
            AuthRequest::UserChangePassword {
                name: "carol".into(),
                password: "h".into(),
            },
            UserNotFound,
        ),
        (
            "grant to missing user",
            grant_role("carol", "rw"),
            UserNotFound,
        ),
        (
            "grant missing role",
            grant_role("alice", "nope"),
            RoleNotFound,
        ),
        (
            "revoke ungranted",
            AuthRequest::UserRevokeRole {
                name: "bob".into(),
                role: "rw".into(),
            },
            RoleNotGranted,
        ),
        (
            "revoke root from root",
            AuthRequest::UserRevokeRole {
                name: "root".into(),
                role: "root".into(),
            },
            InvalidAuthMgmt,
        ),
        (
            "empty role",
            AuthRequest::RoleAdd { name: "".into() },
            RoleEmpty,
        ),
        (
            "taken role",
            AuthRequest::RoleAdd { name: "rw".into() },
            RoleAlreadyExist,
        ),
        (
            "delete root role while on",
            AuthRequest::RoleDelete {
                name: "root".into(),
            },
            InvalidAuthMgmt,
        ),
        (
            "delete missing role",
            AuthRequest::RoleDelete {
                name: "nope".into(),
            },
            RoleNotFound,
        ),
        (
            "grant perm to missing role",
            AuthRequest::RoleGrantPermission {
                name: "nope".into(),
                permission: Some(perm(PermissionKind::Read, "a", "")),
            },
            RoleNotFound,
        ),
        (
            "grant no perm",
            AuthRequest::RoleGrantPermission {
                name: "rw".into(),
                permission: None,
            },
            PermissionNotGiven,
        ),
        (
            "revoke perm not held",
            AuthRequest::RoleRevokePermission {
                role: "rw".into(),
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            },
            PermissionNotGranted,
        ),
        (
            "revoke perm of missing role",
            AuthRequest::RoleRevokePermission {
                role: "nope".into(),
                key: b"a".to_vec(),
                range_end: vec![],
            },
            RoleNotFound,
        ),
        (
            "login missing user",
            AuthRequest::Authenticate {
                name: "carol".into(),
                checked_revision: 0,
                token: String::new(),
            },
            AuthFailed,
        ),
    ];
    for (name, request, expected) in cases {
        let mut state = enabled_state();
        let before = state.clone();
        assert_eq!(state.apply(&request), Err(expected), "{name}");
        assert_eq!(state, before, "{name}: a refusal changed the state");
    }
}

#[test]
fn enable_needs_root_with_the_root_role_and_revisions_move_as_etcd() {
    // Goal: enable's preconditions; which changes move the revision.
    let mut state = AuthState::default();
    assert_eq!(state.revision(), 1);
    assert_eq!(
        state.apply(&AuthRequest::Enable),
        Err(AuthError::RootUserNotExist)
    );
    apply_all(&mut state, &[user_add("root")]);
    assert_eq!(state.revision(), 2);
    assert_eq!(
        state.apply(&AuthRequest::Enable),
        Err(AuthError::RootRoleNotExist)
    );
    // The root role may be granted before it exists.
    apply_all(&mut state, &[grant_role("root", "root")]);
    assert_eq!(state.revision(), 3);
    apply_all(&mut state, &[grant_role("root", "root")]);
    assert_eq!(state.revision(), 3, "a repeated grant changes nothing");
    apply_all(&mut state, &[AuthRequest::Enable, AuthRequest::Enable]);
    assert!(state.enabled());
    assert_eq!(state.revision(), 3, "enable keeps the revision");
    apply_all(&mut state, &[AuthRequest::Disable]);
    assert!(!state.enabled());
    assert_eq!(state.revision(), 4, "disable moves it");
    apply_all(&mut state, &[AuthRequest::Disable]);
    assert_eq!(state.revision(), 4, "disabling twice changes nothing");
    // With auth off, root may be deleted.
    apply_all(
        &mut state,
        &[AuthRequest::UserDelete {
            name: "root".into(),
        }],
    );
    assert!(state.user("root").is_none());
}

#[test]
fn role_delete_takes_the_role_from_every_user_and_permissions_merge() {
    // Goal: a deleted role leaves no user holding it; a re-granted permission
    // changes its kind in place; permissions stay in key order.
    let mut state = enabled_state();
    apply_all(
        &mut state,
        &[
            AuthRequest::RoleGrantPermission {
                name: "rw".into(),
                permission: Some(perm(PermissionKind::Write, "a", "c")),
            },
            AuthRequest::RoleGrantPermission {
                name: "rw".into(),
                permission: Some(perm(PermissionKind::Read, "b", "\0")),
            },
        ],
    );
    let keys: Vec<_> = state
        .role("rw")
        .map(|r| r.permissions.clone())
        .unwrap_or_default();
    assert_eq!(
        keys,
        vec![
            perm(PermissionKind::Write, "a", "c"),
            perm(PermissionKind::Read, "b", "\0"),
            perm(PermissionKind::Read, "z", ""),
        ]
    );
    apply_all(&mut state, &[AuthRequest::RoleDelete { name: "rw".into() }]);
    assert_eq!(state.user("alice").map(|u| u.roles.clone()), Some(vec![]));
}

#[test]
fn permission_checks_follow_etcd() {
    // Goal: the decision for each identity and range, in a table.
    use AuthError::*;
    use PermissionKind::{Read, Write};
    let state = enabled_state();
    let rev = state.revision();
    let who = |user: &str, revision: u64| Caller {
        user: user.into(),
        revision,
    };
    type Case<'a> = (
        Caller,
        &'a str,
        &'a str,
        PermissionKind,
        Result<(), AuthError>,
    );
    let cases: Vec<Case> = vec![
        (Caller::anonymous(), "a", "", Read, Err(UserEmpty)),
        (who("alice", rev - 1), "a", "", Read, Err(OldRevision)),
        (who("carol", rev), "a", "", Read, Err(PermissionDenied)),
        (who("root", rev), "anything", "\0", Write, Ok(())),
        (who("alice", rev), "a", "", Read, Ok(())),
        (who("alice", rev), "b", "", Write, Ok(())),
        (who("alice", rev), "a", "c", Read, Ok(())),
        (who("alice", rev), "a", "d", Read, Err(PermissionDenied)),
        (who("alice", rev), "a", "\0", Read, Err(PermissionDenied)),
        (who("alice", rev), "c", "", Read, Err(PermissionDenied)),
        (who("alice", rev), "z", "", Read, Ok(())),
        (who("alice", rev), "z", "", Write, Err(PermissionDenied)),
        (who("alice", rev), "z", "z\0", Read, Ok(())),
        (who("alice", rev), "z", "za", Read, Err(PermissionDenied)),
        (who("bob", rev), "a", "", Read, Err(PermissionDenied)),
    ];
    for (caller, key, end, kind, expected) in cases {
        assert_eq!(
            state.check_op(&caller, key.as_bytes(), end.as_bytes(), kind),
            expected,
            "{caller:?} {key:?}..{end:?} {kind:?}"
        );
    }
    assert_eq!(
        state.check_admin(&who("root", 1)),
        Ok(()),
        "admin ignores revision"
    );
    assert_eq!(state.check_admin(&who("alice", rev)), Err(PermissionDenied));
    assert_eq!(state.check_admin(&who("carol", rev)), Err(UserNotFound));
    assert_eq!(state.check_admin(&Caller::anonymous()), Err(UserEmpty));
    assert_eq!(state.check_user(&who("bob", rev)), Ok(()));
    assert_eq!(
        state.check_user_get(&who("bob", rev), "bob"),
        Ok(()),
        "own user"
    );
    assert_eq!(
        state.check_user_get(&who("bob", rev), "alice"),
        Err(PermissionDenied)
    );
    assert_eq!(
        state.check_role_get(&who("alice", rev), "rw"),
        Ok(()),
        "held role"
    );
    assert_eq!(
        state.check_role_get(&who("bob", rev), "rw"),
        Err(PermissionDenied)
    );
    assert_eq!(state.check_role_get(&who("root", rev), "rw"), Ok(()));
    assert_eq!(state.check_user(&who("carol", rev)), Err(PermissionDenied));
    let mut off = state.clone();
    off.apply(&AuthRequest::Disable).expect("disable");
    assert_eq!(
        off.check_op(&Caller::anonymous(), b"x", b"\0", Write),
        Ok(())
    );
    assert_eq!(off.check_admin(&Caller::anonymous()), Ok(()));
}

#[test]
fn logins_need_a_password_user_and_the_checked_revision() {
    // Goal: login refusals (off, no-password user, stale check) and the reply.
    let mut state = enabled_state();
    apply_all(
        &mut state,
        &[AuthRequest::UserAdd {
            name: "cn".into(),
            password: Some("ignored".into()),
            no_password: true,
        }],
    );
    let rev = state.revision();
    let login = |name: &str, checked_revision| AuthRequest::Authenticate {
        name: name.into(),
        checked_revision,
        token: "t".into(),
    };
    assert_eq!(state.apply(&login("cn", rev)), Err(AuthError::AuthFailed));
    assert_eq!(state.login_hash("cn"), Err(AuthError::AuthFailed));
    assert_eq!(
        state.apply(&login("alice", rev - 1)),
        Err(AuthError::OldRevision)
    );
    assert_eq!(
        state.apply(&login("alice", rev)),
        Ok(AuthReply::Authenticated {
            user: "alice".into(),
            revision: rev
        })
    );
    assert_eq!(state.revision(), rev, "a login changes nothing");
    assert_eq!(
        state.login_hash("alice"),
        Ok(("hash-of-alice".to_string(), rev))
    );
    state.apply(&AuthRequest::Disable).expect("disable");
    assert_eq!(
        state.apply(&login("alice", state.revision())),
        Err(AuthError::AuthNotEnabled)
    );
    assert_eq!(state.login_hash("alice"), Err(AuthError::AuthNotEnabled));
}

#[test]
fn debug_output_never_shows_a_password_hash() {
    // Goal: the log line of a request names the user, never the hash.
    let shown = format!(
        "{:?} {:?}",
        user_add("alice"),
        AuthRequest::UserChangePassword {
            name: "alice".into(),
            password: "SECRET".into()
        }
    );
    assert!(
        !shown.contains("hash-of") && !shown.contains("SECRET"),
        "{shown}"
    );
}

#[test]
fn interval_rules_match_etcd_ranges() {
    // Goal: single key, from-key, prefix, inverted ranges.
    let iv = |k: &str, e: &str| Interval::of(k.as_bytes(), e.as_bytes());
    let granted = |k: &str, e: &str| Interval::granted(k.as_bytes(), e.as_bytes());
    assert!(covers(&[iv("a", "")], &iv("a", "")));
    assert!(!covers(&[iv("a", "")], &iv("a", "a\0\0")));
    assert!(covers(&[iv("a", "b"), iv("b", "c")], &iv("a", "c")));
    assert!(
        !covers(&[iv("a", "b"), iv("b\0", "c")], &iv("a", "c")),
        "gap at b"
    );
    assert!(covers(&[iv("", "\0")], &iv("zzz", "\0")));
    assert!(
        !covers(&[iv("a", "z")], &iv("b", "\0")),
        "from-key needs an open end"
    );
    assert!(covers(&[iv("b", "\0")], &iv("c", "\0")));
    assert!(
        covers(&[iv("a", "")], &iv("a", "0")),
        "inverted range: its key"
    );
    assert_eq!(
        granted("b", "a"),
        None,
        "an inverted permission grants nothing"
    );
    assert!(!covers(&[], &iv("a", "")));
}

fn point_covered(granted: &[Interval], key: &[u8]) -> bool {
    granted.iter().any(|iv| {
        iv.start.as_slice() <= key && iv.end.as_ref().is_none_or(|end| key < end.as_slice())
    })
}

proptest! {
    #[test]
    fn covers_agrees_with_checking_every_key(
        granted in prop::collection::vec((0u8..6, 0u8..7), 0..5),
        start in 0u8..6,
        len in 0u8..4,
        open in any::<bool>(),
    ) {
        // Goal: coverage equals "every key in the range is in some interval",
        // over a small alphabet where the keys of a range can be listed.
        let granted: Vec<Interval> = granted
            .iter()
            .filter_map(|&(k, e)| {
                let end = if e == 6 { vec![0] } else { vec![e] };
                Interval::granted(&[k], &end)
            })
            .collect();
        let end = if open { vec![0] } else { vec![start + len] };
        let wanted = Interval::of(&[start], &end);
        // Keys of one or two bytes from the alphabet 0..8 (two-byte keys sit
        // between one-byte ones).
        let mut keys: Vec<Vec<u8>> = (0u8..8).map(|a| vec![a]).collect();
        keys.extend((0u8..8).flat_map(|a| (0u8..3).map(move |b| vec![a, b])));
        let in_wanted = |key: &[u8]| {
            key >= wanted.start.as_slice()
                && wanted.end.as_ref().is_none_or(|end| key < end.as_slice())
        };
        let every = keys.iter().filter(|k| in_wanted(k)).all(|k| point_covered(&granted, k));
        if covers(&granted, &wanted) {
            prop_assert!(every);
        } else if !open {
            // A closed range not covered has a listed key outside, as all
            // interval ends are one-byte keys.
            prop_assert!(!every);
        }
    }
}

#[test]
fn simple_tokens_expire_refresh_and_invalidate() {
    // Goal: TTL from last use, per-user and full invalidation.
    let ttl = Duration::from_secs(300);
    let mut tokens: SimpleTokens<Duration> = SimpleTokens::new(ttl);
    let t0 = Duration::from_secs(1000);
    tokens.assign("t1", "alice", t0);
    tokens.assign("t2", "bob", t0);
    assert_eq!(
        tokens.user("t1", t0 + Duration::from_secs(299)),
        Some("alice".into())
    );
    // Used at 299 s: lives until 599 s.
    assert_eq!(
        tokens.user("t1", t0 + Duration::from_secs(598)),
        Some("alice".into())
    );
    assert_eq!(
        tokens.user("t2", t0 + Duration::from_secs(300)),
        None,
        "expired"
    );
    assert_eq!(tokens.user("nope", t0), None);
    tokens.assign("t3", "alice", t0);
    tokens.invalidate_user("alice");
    assert_eq!(tokens.user("t3", t0), None);
    tokens.assign("t4", "bob", t0);
    tokens.clear();
    assert!(tokens.is_empty());
}

#[test]
fn failed_logins_slow_down_that_user_and_address_only() {
    // Goal: free failures, doubling waits, others unaffected, success clears.
    let mut throttle: LoginThrottle<Duration> = LoginThrottle::default();
    let now = Duration::from_secs(10);
    for _ in 0..throttle::FREE_FAILURES {
        assert_eq!(throttle.check(&["user:a", "addr:1"], now), Ok(()));
        throttle.failed(&["user:a", "addr:1"], now);
    }
    assert_eq!(
        throttle.check(&["user:a"], now),
        Ok(()),
        "free failures cost nothing"
    );
    throttle.failed(&["user:a", "addr:1"], now);
    assert_eq!(throttle.check(&["user:a"], now), Err(Throttled));
    assert_eq!(throttle.check(&["addr:1"], now), Err(Throttled));
    assert_eq!(
        throttle.check(&["user:b", "addr:2"], now),
        Ok(()),
        "others unaffected"
    );
    assert_eq!(
        throttle.check(&["user:a"], now + throttle::FIRST_WAIT),
        Ok(())
    );
    assert_eq!(throttle::wait_after(7), throttle::FIRST_WAIT * 2);
    assert_eq!(throttle::wait_after(100), throttle::WAIT_MAX);
    throttle.succeeded("user:a");
    assert_eq!(throttle.check(&["user:a"], now), Ok(()));
}
