//! Who a message, typing indicator or receipt goes to.

use std::sync::Arc;

use protocol::{ErrorCode, ReceiptStatus, ServerFrame, Target, TypingState};

use super::{DeviceMsg, SendError};
use crate::clock::now_ms;
use crate::store::{DeviceRecord, StoreError};
use crate::Env;

fn store_err(e: StoreError) -> SendError {
    SendError::new(ErrorCode::Unavailable, e.to_string())
}

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
                .map_err(store_err)?
            {
                Some(id) => Ok(vec![id]),
                None => Err(SendError::new(
                    ErrorCode::NotFound,
                    format!("no device with address {address} in this tenant"),
                )),
            }
        }
        Target::Group(group_id) => {
            let group = env.directory.group(group_id).await.map_err(store_err)?;
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
                    .map_err(store_err)?
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
            .deliver_if_running(&id, DeviceMsg::Push(frame.clone()));
    }
    Ok(())
}

/// Reports receipts for messages in `reader`'s inbox to each message's sender.
/// Ids not in the reader's inbox are ignored.
pub async fn receipts(
    env: &Env,
    reader: &DeviceRecord,
    message_ids: &[String],
    status: ReceiptStatus,
) -> Result<(), SendError> {
    let ts = now_ms();
    for message_id in message_ids {
        let Some(entry) = env
            .store
            .inbox_entry(&reader.id, message_id)
            .await
            .map_err(store_err)?
        else {
            continue;
        };
        if *entry.from == *reader.address {
            continue;
        }
        let Some(sender_id) = env
            .directory
            .resolve(&reader.tenant_id, &entry.from)
            .await
            .map_err(store_err)?
        else {
            continue;
        };
        let frame: Arc<str> = ServerFrame::Status {
            message_id,
            status,
            by: &reader.address,
            ts,
        }
        .encode()
        .into();
        env.directory
            .deliver_if_running(&sender_id, DeviceMsg::Push(frame));
    }
    Ok(())
}
