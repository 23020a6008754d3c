//! Bodies of the calls that queue background jobs besides sends: group sync
//! (`POST /v1/groups/sync`) and system notifications (`POST /v1/notifications`), with
//! their validation as pure functions (no I/O: ids are checked against the store by
//! the server).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::bulk::{bad, too_large, BulkError};
use crate::frames::Priority;
use crate::validate::{check_body, is_e164, quoted};

/// Most groups one group-sync call may carry.
pub const MAX_GROUPS_PER_SYNC: usize = 10_000;
/// Longest client key of a synced group.
pub const MAX_GROUP_KEY_LEN: usize = 128;
/// Longest group name.
pub const MAX_GROUP_NAME_LEN: usize = 200;
/// Most addresses one notification call may list.
pub const MAX_NOTIFICATION_RECIPIENTS: usize = 100_000;
/// The address every system notification comes from. It is not an E.164 number, so no
/// device can be created with it: the server keeps one reserved device per tenant.
pub const SYSTEM_ADDRESS: &str = "system";

/// One group of a group sync: identified by the caller's `key` (the group id is
/// derived from the tenant and the key, so a repeated sync updates the same group) or
/// by the `group_id` of an existing group of the tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupUpsert {
    /// The caller's key for the group (1 to 128 characters), e.g. a CRM id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub key: Option<String>,
    /// An existing group of the tenant (instead of `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Display name, 1 to 200 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub name: String,
    /// The members after the sync (replaces the current list), at most 1,024.
    #[cfg_attr(feature = "openapi", schema(max_items = 1024))]
    pub members: Vec<String>,
}

/// `POST /v1/groups/sync` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupSync {
    /// Up to 10,000 groups, applied in order.
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub groups: Vec<GroupUpsert>,
    /// Lane: `critical`, `high`, `normal` (default) or `low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

/// `202` answer of `POST /v1/groups/sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupSyncAccepted {
    /// The job; its progress is at `GET /v1/jobs/{id}`.
    pub job_id: String,
    /// Groups the job will write.
    pub total: u64,
    /// Each group's id, in the order of `groups` (a `key`'s id is the same every time).
    pub group_ids: Vec<String>,
}

/// `POST /v1/notifications` body.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    /// The message body every recipient gets (a JSON object, as in a send).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: Box<RawValue>,
    /// Recipient addresses (up to 100,000); absent: every device of the tenant.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 100000))]
    pub to: Option<Vec<String>>,
    /// Lane: `critical`, `high`, `normal` (default) or `low`.
    #[serde(default)]
    pub priority: Option<String>,
}

/// `202` answer of a call that queued one background job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobAccepted {
    /// The job; its progress is at `GET /v1/jobs/{id}`.
    pub job_id: String,
    /// Items the job will process (groups, or recipients).
    pub total: u64,
}

/// The lane a call asks for (`normal` when absent).
pub fn parse_lane(priority: Option<&str>) -> Result<Priority, BulkError> {
    match priority {
        None => Ok(Priority::Normal),
        Some(p) => Priority::parse(p)
            .ok_or_else(|| bad("`priority` must be critical, high, normal or low")),
    }
}

/// Checks a group sync whole; errors name the offending index (`too_large` past a
/// count limit, else `bad_request`).
pub fn check_group_sync(sync: &GroupSync, max_members: usize) -> Result<(), BulkError> {
    if sync.groups.is_empty() {
        return Err(bad("`groups` must not be empty"));
    }
    if sync.groups.len() > MAX_GROUPS_PER_SYNC {
        return Err(too_large(format!(
            "`groups` holds at most {MAX_GROUPS_PER_SYNC} groups per call, got {}",
            sync.groups.len()
        )));
    }
    for (i, g) in sync.groups.iter().enumerate() {
        match (&g.key, &g.group_id) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(bad(format!(
                    "`groups[{i}]`: give either `key` or `group_id`"
                )));
            }
            (Some(k), None) if k.is_empty() || k.chars().count() > MAX_GROUP_KEY_LEN => {
                return Err(bad(format!(
                    "`groups[{i}].key` must be 1 to {MAX_GROUP_KEY_LEN} characters"
                )));
            }
            (None, Some(id)) if id.is_empty() || id.len() > 64 => {
                return Err(bad(format!("`groups[{i}].group_id` is not a group id")));
            }
            _ => {}
        }
        let name = g.name.trim();
        if name.is_empty() || name.chars().count() > MAX_GROUP_NAME_LEN {
            return Err(bad(format!(
                "`groups[{i}].name` must be 1 to {MAX_GROUP_NAME_LEN} characters"
            )));
        }
        if g.members.len() > max_members {
            return Err(too_large(format!(
                "`groups[{i}].members` holds at most {max_members} addresses"
            )));
        }
        if let Some((j, m)) = g.members.iter().enumerate().find(|(_, m)| !is_e164(m)) {
            return Err(bad(format!(
                "`groups[{i}].members[{j}]` must be an E.164 address like +15550001, got {}",
                quoted(m)
            )));
        }
    }
    Ok(())
}

/// Checks a notification's body (a JSON object of at most `max_body_bytes`) and its
/// recipient list, if any; answers the list sorted and without repeats.
pub fn check_notification(
    req: &NotificationRequest,
    max_body_bytes: usize,
) -> Result<Option<Vec<String>>, BulkError> {
    let raw = req.body.get();
    if !raw.trim_start().starts_with('{') {
        return Err(bad("`body` must be a JSON object"));
    }
    if raw.len() > max_body_bytes {
        return Err(too_large(format!("`body` is over {max_body_bytes} bytes")));
    }
    check_body(raw).map_err(bad)?;
    let Some(to) = &req.to else {
        return Ok(None);
    };
    if to.is_empty() {
        return Err(bad(
            "`to` must not be empty (leave it out for every device)",
        ));
    }
    if to.len() > MAX_NOTIFICATION_RECIPIENTS {
        return Err(too_large(format!(
            "`to` holds at most {MAX_NOTIFICATION_RECIPIENTS} addresses, got {}",
            to.len()
        )));
    }
    if let Some((i, a)) = to.iter().enumerate().find(|(_, a)| !is_e164(a)) {
        return Err(bad(format!(
            "`to[{i}]` must be an E.164 address like +15550001, got {}",
            quoted(a)
        )));
    }
    let mut to = to.clone();
    to.sort();
    to.dedup();
    Ok(Some(to))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn group(key: Option<&str>, id: Option<&str>, members: &[&str]) -> GroupUpsert {
        GroupUpsert {
            key: key.map(Into::into),
            group_id: id.map(Into::into),
            name: "G".into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn a_group_needs_exactly_one_of_key_and_id() {
        let both = GroupSync {
            groups: vec![group(Some("k"), Some("g_1"), &[])],
            priority: None,
        };
        assert!(check_group_sync(&both, 8)
            .unwrap_err()
            .message
            .contains("groups[0]"));
        let neither = GroupSync {
            groups: vec![group(None, None, &[])],
            priority: None,
        };
        assert!(check_group_sync(&neither, 8).is_err());
        let ok = GroupSync {
            groups: vec![group(Some("k"), None, &["+15550001"])],
            priority: None,
        };
        assert!(check_group_sync(&ok, 8).is_ok());
    }

    #[test]
    fn errors_name_the_offending_member() {
        let sync = GroupSync {
            groups: vec![
                group(Some("a"), None, &["+15550001"]),
                group(Some("b"), None, &["+15550001", "nope"]),
            ],
            priority: None,
        };
        let e = check_group_sync(&sync, 8).unwrap_err();
        assert!(e.message.contains("groups[1].members[1]"), "{e:?}");
        let big = GroupSync {
            groups: vec![group(Some("a"), None, &["+15550001", "+15550002"])],
            priority: None,
        };
        let e = check_group_sync(&big, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("at most 1"));
    }

    #[test]
    fn a_notification_list_is_checked_and_deduplicated() {
        let req: NotificationRequest = serde_json::from_str(
            r#"{"body":{"text":"hi"},"to":["+15550002","+15550001","+15550002"]}"#,
        )
        .unwrap();
        assert_eq!(
            check_notification(&req, 1024).unwrap().unwrap(),
            vec!["+15550001", "+15550002"]
        );
        let all: NotificationRequest = serde_json::from_str(r#"{"body":{"text":"hi"}}"#).unwrap();
        assert_eq!(check_notification(&all, 1024).unwrap(), None);
        let bad: NotificationRequest =
            serde_json::from_str(r#"{"body":{"text":"hi"},"to":["+1555","x"]}"#).unwrap();
        assert!(check_notification(&bad, 1024)
            .unwrap_err()
            .message
            .contains("to[1]"));
        let not_object: NotificationRequest = serde_json::from_str(r#"{"body":[1]}"#).unwrap();
        assert!(check_notification(&not_object, 1024).is_err());
        let big: NotificationRequest =
            serde_json::from_str(r#"{"body":{"text":"0123456789"}}"#).unwrap();
        let e = check_notification(&big, 8).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("over 8 bytes"));
    }
}
