//! The `Store` contract, run against every backend: each check is written once
//! (`async fn check_xxx(store: Arc<dyn Store>)`) and [`contract!`] runs it on a fresh
//! SQLite store (`sqlite::check_xxx`) and a fresh MongoDB database
//! (`mongodb::check_xxx`, on `SWITCHBOARD_TEST_MONGODB_URI`, which `./scripts/test`
//! sets; without it those tests fail, they never skip).
//!
//! MongoDB-only tests (`mongodb_only`): every query the store runs is served by an
//! index, index creation at connect, statistics, error mapping.
#![allow(clippy::unwrap_used)]

mod budgets;
mod cluster;
mod directory;
mod harness;
mod inbox;
mod jobs;
mod media;
mod mongodb_only;
mod webhooks;

/// Every check, by name.
mod checks {
    pub use crate::cluster::*;
    pub use crate::directory::*;
    pub use crate::inbox::*;
    pub use crate::jobs::*;
    pub use crate::webhooks::*;
}

/// Runs each named check once per backend.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = crate::harness::sqlite();
                    crate::checks::$check(backend.store()).await;
                    backend.finish().await;
                }
            )*
        }

        mod mongodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = crate::harness::mongodb().await;
                    crate::checks::$check(backend.store()).await;
                    backend.finish().await;
                }
            )*
        }
    };
}

contract!(
    check_tenants,
    check_devices,
    check_delete_device,
    check_contacts,
    check_groups,
    check_concurrent_group_changes,
    check_group_upserts,
    check_commit_and_read,
    check_commit_retries_and_conflicts,
    check_inbox_lookups,
    check_claims_by_lane_with_aging,
    check_paused_lanes_and_depths,
    check_state_machine,
    check_job_fields_and_progress,
    check_queue_tail,
    check_shared_bodies_and_prune,
    check_concurrent_claims,
    check_fences,
    check_message_rows_once,
    check_leased_claims,
    check_lane_pauses,
    check_nodes,
    check_owner_claims,
    check_concurrent_owner_claims,
    check_webhook_endpoints,
    check_webhook_claims_in_order,
    check_webhook_leases,
    check_webhook_status_never_regresses,
    check_webhook_dead_letters_log_and_prune,
    check_concurrent_webhook_claims,
);

#[test]
fn backends_name_themselves() {
    let backend = harness::sqlite();
    assert_eq!(backend.store().backend(), "sqlite");
}
