//! Who a message, typing indicator or receipt goes to.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::{ErrorCode, ReceiptStatus, ServerFrame, Target, TypingState};

use super::receipts::{ReceiptBatch, ReceiptNote};
use super::{DeviceMsg, SendError};
use crate::clock::now_ms;
use crate::store::{DeviceRecord, RowKind};
use crate::Env;

/// Device ids a send from `sender` to `target` lands in, the sender excluded.
pub async fn recipients(
    env: &Env,
    sender: &DeviceRecord,
    target: &Target,
) -> Result<Vec<String>, SendError> {
    match target {
        Target::To(address) => {
            if *address == sender.address {
                return Ok(Vec::new());
            }
            match env
                .directory
                .resolve(&sender.tenant_id, address)
                .await
                .map_err(|e| SendError::storage(&e))?
            {
                Some(id) => Ok(vec![id]),
                None => Err(SendError::new(
                    ErrorCode::NotFound,
                    format!("no device with address {address} in this tenant"),
                )),
            }
        }
        Target::Group(group_id) => {
            let group = env
                .directory
                .group(group_id)
                .await
                .map_err(|e| SendError::storage(&e))?;
            let Some(group) = group.filter(|g| g.tenant_id == sender.tenant_id) else {
                return Err(SendError::new(
                    ErrorCode::NotFound,
                    format!("no group {group_id} in this tenant"),
                ));
            };
            if group.members.binary_search(&sender.address).is_err() {
                return Err(SendError::new(
                    ErrorCode::Forbidden,
                    "this device is not a member of the group",
                ));
            }
            let mut out = Vec::with_capacity(group.members.len());
            for member in group.members.iter().filter(|m| **m != sender.address) {
                if let Some(id) = env
                    .directory
                    .resolve(&sender.tenant_id, member)
                    .await
                    .map_err(|e| SendError::storage(&e))?
                {
                    out.push(id);
                }
            }
            Ok(out)
        }
    }
}

/// Forwards a typing indicator to the target's connected devices. Never stored.
pub async fn typing(
    env: &Env,
    sender: &DeviceRecord,
    target: &Target,
    state: TypingState,
) -> Result<(), SendError> {
    let group = match target {
        Target::Group(g) => Some(g.as_str()),
        Target::To(_) => None,
    };
    let frame: Arc<str> = ServerFrame::Typing {
        from: &sender.address,
        group,
        state,
    }
    .encode()
    .into();
    for id in recipients(env, sender, target).await? {
        env.directory
            .cast_if_running(&id, DeviceMsg::Push(frame.clone()))
            .await;
    }
    Ok(())
}

/// Hands receipts for messages in `reader`'s inbox to each message's sender session
/// (started if needed: a status is stored even while the sender is offline). Ids not
/// in the reader's inbox, and the reader's own messages, are ignored.
pub async fn receipts(
    env: &Arc<Env>,
    reader: &DeviceRecord,
    message_ids: &[String],
    status: ReceiptStatus,
) -> Result<(), SendError> {
    let ts = now_ms();
    let rows = env
        .store
        .inbox_messages(&reader.id, message_ids)
        .await
        .map_err(|e| SendError::storage(&e))?;
    let by: Arc<str> = reader.address.as_str().into();
    let mut per_sender: HashMap<String, Vec<ReceiptNote>> = HashMap::new();
    for row in rows {
        let RowKind::Message(message) = row.kind else {
            continue;
        };
        if *message.from == *reader.address {
            continue;
        }
        let sender = match &message.sender_device {
            Some(s) => s.to_string(),
            None => match env
                .directory
                .resolve(&reader.tenant_id, &message.from)
                .await
            {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => return Err(SendError::storage(&e)),
            },
        };
        per_sender.entry(sender).or_default().push(ReceiptNote {
            message_id: message.id.clone(),
            status,
            by: by.clone(),
            ts,
        });
    }
    for (sender, notes) in per_sender {
        let batch = ReceiptBatch::new(env, &sender, notes);
        // A batch that cannot be routed now is delivered again by its guard.
        if let Err(e) = env
            .directory
            .deliver(&sender, DeviceMsg::Receipts(batch))
            .await
        {
            tracing::debug!(device_id = %sender, error = %e, "receipts not routed yet");
        }
    }
    Ok(())
}
