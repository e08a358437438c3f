//! What `apply` does with callers: every member checks at apply time.

use bytes::Bytes;
use mainstay_auth::{AuthError, AuthRequest, Caller, Permission, PermissionKind};

use crate::*;

fn ctx(log_index: u64) -> ApplyContext {
    ApplyContext {
        log_index,
        prev_values: false,
    }
}

fn as_(caller: &Caller, command: Command) -> Command {
    Command::Authorized {
        caller: caller.clone(),
        command: Box::new(command),
    }
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: Bytes::from_static(b"v"),
        ..PutRequest::default()
    }
}

fn auth(space: &mut KeySpace, caller: &Caller, request: AuthRequest) {
    let applied = space.apply(&as_(caller, Command::Auth(request)), &ctx(0));
    applied.result.expect("auth change");
}

/// root, and alice with read-write on [a, b); auth on.
fn space_with_users() -> (KeySpace, Caller, Caller) {
    let mut space = KeySpace::new();
    let nobody = Caller::anonymous();
    for name in ["root", "alice"] {
        auth(
            &mut space,
            &nobody,
            AuthRequest::UserAdd {
                name: name.into(),
                password: Some("hash".into()),
                no_password: false,
            },
        );
    }
    auth(
        &mut space,
        &nobody,
        AuthRequest::RoleAdd { name: "rw".into() },
    );
    auth(
        &mut space,
        &nobody,
        AuthRequest::RoleGrantPermission {
            name: "rw".into(),
            permission: Some(Permission {
                kind: PermissionKind::ReadWrite,
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            }),
        },
    );
    for (user, role) in [("root", "root"), ("alice", "rw")] {
        auth(
            &mut space,
            &nobody,
            AuthRequest::UserGrantRole {
                user: user.into(),
                role: role.into(),
            },
        );
    }
    auth(&mut space, &nobody, AuthRequest::Enable);
    let revision = space.auth().revision();
    let root = Caller {
        user: "root".into(),
        revision,
    };
    let alice = Caller {
        user: "alice".into(),
        revision,
    };
    (space, root, alice)
}

fn refused(space: &mut KeySpace, command: &Command) -> AuthError {
    let before = space.revision();
    let applied = space.apply(command, &ctx(0));
    assert!(applied.changes.is_empty() && applied.events.is_empty());
    assert_eq!(space.revision(), before, "a refusal moved the revision");
    match applied.result {
        Err(MvccError::Auth(error)) => error,
        other => panic!("expected an auth refusal, got {other:?}"),
    }
}

#[test]
fn every_member_refuses_at_apply_what_the_caller_may_not_do_then() {
    // Goal: the checks at apply time, against the auth state of that point.
    let (mut space, root, alice) = space_with_users();
    assert!(
        space
            .apply(&as_(&alice, Command::Put(put("a0"))), &ctx(1))
            .result
            .is_ok()
    );
    let cases: Vec<(&str, Command, AuthError)> = vec![
        (
            "outside the range",
            as_(&alice, Command::Put(put("x0"))),
            AuthError::PermissionDenied,
        ),
        (
            "nobody",
            as_(&Caller::anonymous(), Command::Put(put("a0"))),
            AuthError::UserEmpty,
        ),
        (
            "nested txn",
            as_(
                &alice,
                Command::Txn(TxnRequest {
                    success: vec![RequestOp::Txn(TxnRequest {
                        success: vec![RequestOp::Put(put("x0"))],
                        ..TxnRequest::default()
                    })],
                    ..TxnRequest::default()
                }),
            ),
            AuthError::PermissionDenied,
        ),
        (
            "the failure branch",
            as_(
                &alice,
                Command::Txn(TxnRequest {
                    success: vec![RequestOp::Put(put("a0"))],
                    failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                        key: b"x".to_vec(),
                        ..DeleteRangeRequest::default()
                    })],
                    ..TxnRequest::default()
                }),
            ),
            AuthError::PermissionDenied,
        ),
        (
            "compaction",
            as_(
                &alice,
                Command::Compact(CompactionRequest {
                    revision: 1,
                    physical: false,
                }),
            ),
            AuthError::PermissionDenied,
        ),
        (
            "bare auth change",
            Command::Auth(AuthRequest::RoleAdd { name: "r".into() }),
            AuthError::UserEmpty,
        ),
        (
            "auth change by a user",
            as_(
                &alice,
                Command::Auth(AuthRequest::RoleAdd { name: "r".into() }),
            ),
            AuthError::PermissionDenied,
        ),
        (
            "nested callers",
            as_(&root, as_(&root, Command::Put(put("a0")))),
            AuthError::PermissionDenied,
        ),
    ];
    for (name, command, expected) in cases {
        assert_eq!(refused(&mut space, &command), expected, "{name}");
    }
    // A lease holding x0 (granted and attached by root): alice may neither
    // attach a0 to it nor revoke it, and root may.
    let granted = space.apply(
        &as_(
            &root,
            Command::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 60 }),
        ),
        &ctx(2),
    );
    assert!(granted.result.is_ok());
    let mut on_lease = put("x0");
    on_lease.lease = 9;
    assert!(
        space
            .apply(&as_(&root, Command::Put(on_lease)), &ctx(3))
            .result
            .is_ok()
    );
    let mut attach = put("a1");
    attach.lease = 9;
    assert_eq!(
        refused(&mut space, &as_(&alice, Command::Put(attach))),
        AuthError::PermissionDenied
    );
    let revoke = Command::LeaseRevoke(LeaseRevokeRequest { id: 9 });
    assert_eq!(
        refused(&mut space, &as_(&alice, revoke.clone())),
        AuthError::PermissionDenied
    );
    // The leader's expiry revoke travels bare: no caller, no check.
    assert!(space.apply(&revoke, &ctx(4)).result.is_ok());
}

#[test]
fn a_command_authorised_under_an_older_auth_revision_is_refused() {
    // Goal: a permission revoked between proposal and apply is not used.
    let (mut space, root, alice) = space_with_users();
    let proposed = as_(&alice, Command::Put(put("a0")));
    auth(
        &mut space,
        &root,
        AuthRequest::RoleRevokePermission {
            role: "rw".into(),
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        },
    );
    assert_eq!(refused(&mut space, &proposed), AuthError::OldRevision);
}

#[test]
fn auth_changes_persist_the_state_and_leave_the_revision() {
    // Goal: an effective change returns the whole state to persist; a no-op
    // (a repeated enable) returns none; neither moves the MVCC revision.
    let (mut space, root, _) = space_with_users();
    let before = space.revision();
    let applied = space.apply(
        &as_(
            &root,
            Command::Auth(AuthRequest::RoleAdd { name: "n".into() }),
        ),
        &ctx(5),
    );
    assert!(
        matches!(applied.changes.as_slice(), [Change::Auth(state)] if **state == *space.auth())
    );
    let applied = space.apply(&as_(&root, Command::Auth(AuthRequest::Enable)), &ctx(6));
    assert!(applied.result.is_ok() && applied.changes.is_empty());
    assert_eq!(space.revision(), before);
}
