//! The shared rate budgets' contract (`actors::limits::shared`), run against the
//! in-process reference ([`MemoryBudgets`]) and the Redis implementation on
//! `SWITCHBOARD_TEST_REDIS_URL` (which `./scripts/test` sets; without it the Redis
//! tests fail, they never skip): at most N units in any minute however many handles
//! take from a window, all or nothing over the windows of a call, a cost over N takes
//! the whole window. Then what only Redis has: the sliding window on Redis' clock, the
//! keys and their expiry, and the fallback when Redis is away or silent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::limits::shared::{ClusterBudgets, Grant, MemoryBudgets, SharedBudgets, Window};
use actors::limits::Scope;
use switchboard::cluster::budgets::RedisBudgets;

/// The variable naming the Redis server of the tests.
const REDIS_URL_VAR: &str = "SWITCHBOARD_TEST_REDIS_URL";

fn redis_url() -> String {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{REDIS_URL_VAR} is not set: run ./scripts/test (it starts a Redis test \
             server), or `source scripts/services` before cargo nextest"
        ),
    }
}

/// A key prefix no other test uses.
fn fresh_prefix() -> String {
    format!("sbtest_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Handles on one shared store, as several nodes have.
type Handles = Box<dyn Fn() -> Arc<dyn SharedBudgets> + Send + Sync>;

fn memory() -> Handles {
    let one: Arc<dyn SharedBudgets> = Arc::new(MemoryBudgets::default());
    Box::new(move || one.clone())
}

/// Each handle on a client and connection of its own, the same Redis and prefix.
fn redis_at(prefix: String) -> Handles {
    let url = redis_url();
    Box::new(move || {
        let client = ::redis::Client::open(url.as_str()).expect("a Redis URL");
        Arc::new(RedisBudgets::new(&client, &prefix).expect("a connection manager"))
    })
}

fn redis() -> Handles {
    redis_at(fresh_prefix())
}

fn device(key: &str, per_minute: u32) -> Window<'_> {
    Window {
        scope: Scope::Device,
        key,
        per_minute,
    }
}

fn tenant(key: &str, per_minute: u32) -> Window<'_> {
    Window {
        scope: Scope::Tenant,
        key,
        per_minute,
    }
}

async fn take(b: &Arc<dyn SharedBudgets>, windows: &[Window<'_>], cost: u32) -> Grant {
    b.take(windows, cost).await.expect("the store answers")
}

fn refused_by(grant: Grant) -> (Scope, Duration) {
    match grant {
        Grant::Refused { scope, wait } => (scope, wait),
        Grant::Granted => panic!("granted, expected a refusal"),
    }
}

/// Two handles (two nodes) taking from the same windows at once, 40 tries each:
/// exactly N granted in all, and the refusals name the window and a wait of about a
/// minute (nothing comes back before the first grant is a minute old).
async fn check_handles_together_grant_n(handles: Handles) {
    let (a, b) = (handles(), handles());
    let run = |h: Arc<dyn SharedBudgets>| async move {
        let mut granted = 0;
        for _ in 0..40 {
            match take(&h, &[device("d1", 100), tenant("t1", 7)], 1).await {
                Grant::Granted => granted += 1,
                Grant::Refused { scope, wait } => {
                    assert_eq!(scope, Scope::Tenant);
                    assert!(
                        wait > Duration::from_secs(50) && wait <= Duration::from_secs(61),
                        "{wait:?}"
                    );
                }
            }
        }
        granted
    };
    let started = Instant::now();
    let (ga, gb) = tokio::join!(tokio::spawn(run(a.clone())), tokio::spawn(run(b.clone())));
    let (ga, gb) = (ga.expect("task"), gb.expect("task"));
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "too slow to judge"
    );
    assert_eq!(ga + gb, 7, "granted {ga} + {gb}");
    // Costs add up across handles the same way: 3 + 4 of 7, then nothing.
    assert_eq!(take(&a, &[tenant("t2", 7)], 3).await, Grant::Granted);
    assert_eq!(take(&b, &[tenant("t2", 7)], 4).await, Grant::Granted);
    refused_by(take(&a, &[tenant("t2", 7)], 1).await);
    // Other windows are untouched.
    assert_eq!(take(&b, &[tenant("t3", 1)], 1).await, Grant::Granted);
}

/// A refusal by any window of a call takes nothing from the others.
async fn check_all_or_nothing(handles: Handles) {
    let h = handles();
    // The tenant (2) refuses the third send: the devices' windows keep their room.
    assert_eq!(
        take(&h, &[device("a", 3), tenant("t", 2)], 1).await,
        Grant::Granted
    );
    assert_eq!(
        take(&h, &[device("b", 3), tenant("t", 2)], 1).await,
        Grant::Granted
    );
    let (scope, _) = refused_by(take(&h, &[device("a", 3), tenant("t", 2)], 1).await);
    assert_eq!(scope, Scope::Tenant);
    // Device a spent one of 3: two more fit, the refused send took nothing.
    assert_eq!(take(&h, &[device("a", 3)], 2).await, Grant::Granted);
    let (scope, _) = refused_by(take(&h, &[device("a", 3)], 1).await);
    assert_eq!(scope, Scope::Device);
    // The device refuses first: the tenant u keeps its room.
    let (scope, _) = refused_by(take(&h, &[device("a", 3), tenant("u", 2)], 1).await);
    assert_eq!(scope, Scope::Device);
    assert_eq!(take(&h, &[tenant("u", 2)], 2).await, Grant::Granted);
    // A window refusing after others said yes (the last one): still nothing taken.
    let global = Window {
        scope: Scope::Global,
        key: "all",
        per_minute: 1,
    };
    assert_eq!(take(&h, &[global], 1).await, Grant::Granted);
    let (scope, _) = refused_by(take(&h, &[device("c", 5), tenant("w", 5), global], 1).await);
    assert_eq!(scope, Scope::Global);
    assert_eq!(take(&h, &[device("c", 5)], 5).await, Grant::Granted);
    assert_eq!(take(&h, &[tenant("w", 5)], 5).await, Grant::Granted);
}

/// A cost over a window's limit needs the whole window and spends it.
async fn check_cost_over_the_limit_takes_the_window(handles: Handles) {
    let h = handles();
    assert_eq!(take(&h, &[device("g", 3)], 10).await, Grant::Granted);
    let (_, wait) = refused_by(take(&h, &[device("g", 3)], 1).await);
    assert!(wait > Duration::from_secs(50), "{wait:?}");
    // Not when anything of the window is spent.
    assert_eq!(take(&h, &[device("h", 3)], 1).await, Grant::Granted);
    refused_by(take(&h, &[device("h", 3)], 10).await);
    assert_eq!(take(&h, &[device("h", 3)], 2).await, Grant::Granted);
    // A limit of 0 is 1.
    assert_eq!(take(&h, &[device("z", 0)], 1).await, Grant::Granted);
    refused_by(take(&h, &[device("z", 0)], 1).await);
}

macro_rules! budgets_contract {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::memory()).await;
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::redis()).await;
                }
            )*
        }
    };
}

budgets_contract!(
    check_handles_together_grant_n,
    check_all_or_nothing,
    check_cost_over_the_limit_takes_the_window,
);

/// Redis' clock in seconds.
async fn redis_now(conn: &mut ::redis::aio::MultiplexedConnection) -> i64 {
    let (secs, _): (i64, i64) = ::redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs
}

/// The window slides on Redis' clock: what was granted 61 s ago or more is free again,
/// what was granted 60 s ago still counts (the window is conservative by at most one
/// second), and the wait names when the oldest units leave. Grants land in the
/// current second's field of a hash under the prefix, which expires by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_window_slides_on_the_servers_clock() {
    let prefix = fresh_prefix();
    let client = ::redis::Client::open(redis_url()).expect("a Redis URL");
    let budgets: Arc<dyn SharedBudgets> =
        Arc::new(RedisBudgets::new(&client, &prefix).expect("a connection manager"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let key = format!("{prefix}:budget:device:old:normal");
    let now = redis_now(&mut conn).await;
    // 4 units granted 61 s ago, 2 units 30 s ago, of a limit of 5.
    let _: () = ::redis::cmd("HSET")
        .arg(&key)
        .arg(now - 61)
        .arg(4)
        .arg(now - 30)
        .arg(2)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let w = [device("old:normal", 5)];
    assert_eq!(take(&budgets, &w, 3).await, Grant::Granted);
    let (scope, wait) = refused_by(take(&budgets, &w, 1).await);
    assert_eq!(scope, Scope::Device);
    // The 2 units of 30 s ago leave first, 31 s from now (±1 s of clock ticks).
    assert!(
        wait > Duration::from_secs(29) && wait <= Duration::from_secs(32),
        "{wait:?}"
    );
    // The stale field is gone, the grant is in this second's field, and the hash
    // expires a little over a minute after the last grant.
    let fields: std::collections::HashMap<i64, i64> = ::redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    assert!(!fields.contains_key(&(now - 61)), "{fields:?}");
    assert_eq!(fields.get(&(now - 30)), Some(&2), "{fields:?}");
    assert_eq!(fields.values().sum::<i64>(), 5, "{fields:?}");
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!((55..=62).contains(&ttl), "ttl {ttl}");
    // A unit granted 60 s ago still counts: it may be less than 60 s old. (Should
    // Redis' second tick between the HSET and the call, the unit is 61 s old and
    // granted; then again, on a fresh window.)
    let mut counted = false;
    for attempt in 0..5 {
        let name = format!("edge{attempt}");
        let key = format!("{prefix}:budget:tenant:{name}");
        let now = redis_now(&mut conn).await;
        let _: () = ::redis::cmd("HSET")
            .arg(&key)
            .arg(now - 60)
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("HSET");
        match take(&budgets, &[tenant(&name, 1)], 1).await {
            Grant::Refused { scope, wait } => {
                assert_eq!(scope, Scope::Tenant);
                assert!(wait <= Duration::from_secs(2), "{wait:?}");
                counted = true;
                break;
            }
            Grant::Granted => assert!(redis_now(&mut conn).await > now, "granted within 60 s"),
        }
    }
    assert!(counted, "Redis' clock ticked at every attempt");
    // Every key the budgets wrote is under the prefix.
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("{prefix}:budget:"))),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("{prefix}:budget:device:old:normal")),
        "{keys:?}"
    );
}

/// Redis refusing connections (a closed loopback port) or accepting and never
/// answering: every call gives up within the bound, the node's own budgets decide,
/// and each fallback is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_or_silent_falls_back_within_the_bound() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    // A port that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let silent_port = silent.local_addr().expect("its address").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    for port in [port, silent_port] {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("a URL");
        let store = Arc::new(RedisBudgets::new(&client, "away").expect("a lazy manager"));
        let budgets = ClusterBudgets::new(store, ClusterBudgets::TIMEOUT);
        for i in 1..=3 {
            let started = Instant::now();
            assert_eq!(budgets.take(&[device("d", 1)], 1).await, None);
            let took = started.elapsed();
            assert!(took < Duration::from_millis(600), "port {port}: {took:?}");
            assert_eq!(budgets.fallbacks(), i);
        }
    }
    held.abort();
    // The same handle on a Redis that answers: decided there, no fallback.
    let client = ::redis::Client::open(redis_url()).expect("a Redis URL");
    let store = Arc::new(RedisBudgets::new(&client, &fresh_prefix()).expect("a manager"));
    let budgets = ClusterBudgets::new(store, ClusterBudgets::TIMEOUT);
    assert_eq!(
        budgets.take(&[device("d", 1)], 1).await,
        Some(Grant::Granted)
    );
    assert!(matches!(
        budgets.take(&[device("d", 1)], 1).await,
        Some(Grant::Refused { .. })
    ));
    assert_eq!(budgets.fallbacks(), 0);
}
