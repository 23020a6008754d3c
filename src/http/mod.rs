//! REST handlers. Each handler's doc comment starts with its route.

pub mod admin;
pub mod admin_cluster;
pub mod admin_ops;
pub mod body;
pub mod cors;
pub mod devices;
pub mod group_sync;
pub mod groups;
pub mod jobs;
pub mod media;
pub mod messages;
pub mod notifications;
pub mod openapi;
pub mod ops;
pub mod queues;
pub mod stats;
pub mod webhooks;

use actix_web::web;

use crate::error::ApiError;

/// Registers every REST route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(admin::create_tenant)
        .service(admin::inject_panic)
        .service(admin::inject_start_panics)
        .service(admin::inject_store_faults)
        .service(devices::create_device)
        .service(devices::list_devices)
        .service(devices::get_device)
        .service(devices::delete_device)
        .service(devices::create_token)
        .service(devices::put_contacts)
        .service(devices::get_contacts)
        .service(group_sync::sync_groups)
        .service(groups::create_group)
        .service(groups::get_group)
        .service(groups::add_members)
        .service(groups::remove_member)
        .service(messages::send_message)
        .service(messages::history)
        .service(messages::get_message_by_client_id)
        .service(messages::get_message)
        .service(jobs::bulk_send)
        .service(notifications::notify)
        .service(jobs::get_job)
        .service(jobs::cancel_job)
        .service(jobs::retry_job)
        .service(media::upload)
        .service(media::get_meta)
        .service(media::get_thumbnail)
        .service(media::get_file)
        .service(queues::queue_stats)
        .service(queues::restart_queues)
        .service(queues::pause_lane)
        .service(queues::resume_lane)
        .service(stats::message_stats)
        .service(webhooks::create_webhook)
        .service(webhooks::list_webhooks)
        .service(webhooks::get_webhook)
        .service(webhooks::update_webhook)
        .service(webhooks::delete_webhook)
        .service(webhooks::rotate_secret)
        .service(webhooks::test_webhook)
        .service(webhooks::deliveries)
        .service(webhooks::dead_letters)
        .service(webhooks::replay)
        .service(ops::health)
        .service(admin_cluster::cluster_view)
        .service(admin_cluster::device_owner)
        .service(admin_ops::cache_stats)
        .service(admin_ops::clear_cache_kind)
        .service(admin_ops::clear_cache_entry)
        .service(admin_ops::db_stats)
        .service(crate::metrics::prometheus)
        .service(ops::openapi_json);
}

/// Validates an E.164 address field.
pub fn check_address(field: &str, address: &str) -> Result<(), ApiError> {
    if protocol::validate::is_e164(address) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{field}` must be an E.164 address like +15550001, got {address:?}"
        )))
    }
}
