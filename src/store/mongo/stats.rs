//! Statistics of the MongoDB store for `GET /admin/db/stats`, and the list of every
//! query the store runs ([`known_queries`]).
//!
//! - **Collections**: document count and sizes from `$collStats` (else the `collStats`
//!   command, else an estimated count), its indexes from `listIndexes`, each matched to
//!   its definition in [`super::INDEXES`] (by name, else by key: some servers rename
//!   indexes), with its use since the server started from `$indexStats`.
//! - **Queries**: each known query with the index it is meant to use and, where the
//!   server explains queries the MongoDB way, the stages and indexes of its winning
//!   plan.
//!
//! A server that lacks one of these commands gets `None` for what that command would
//! have told; the call as a whole does not fail.
//!
//! The known queries are built by the same functions the store calls (with sample
//! values), so this list cannot drift from what runs.

use std::collections::HashMap;

use actors::store::StoreResult;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use protocol::Priority;
use serde::Serialize;

use super::indexes::{IndexDef, INDEXES};
use super::{
    aggregate_all, bson_i64, cluster as c, coll, directory as d, fence as f, inbox as i, jobs as j,
    MongoStore,
};

/// One query the store runs: its collection, filter and order, and the index that
/// serves it.
#[derive(Debug, Clone)]
pub struct KnownQuery {
    /// The store method that runs it.
    pub operation: &'static str,
    /// Collection.
    pub collection: &'static str,
    /// The filter (with sample values when listed).
    pub filter: Document,
    /// The order asked for, if any.
    pub sort: Option<Document>,
    /// The index of [`INDEXES`] (or `_id_`) meant to serve it; `None`: it reads the
    /// whole collection by design (counts over everything, a handful of tenants).
    pub index: Option<&'static str>,
    /// Filter fields checked on the documents the index finds, outside its key.
    pub residual: &'static [&'static str],
}

impl KnownQuery {
    pub(crate) fn new(operation: &'static str, collection: &'static str, filter: Document) -> Self {
        KnownQuery {
            operation,
            collection,
            filter,
            sort: None,
            index: None,
            residual: &[],
        }
    }

    pub(crate) fn sort(mut self, sort: Document) -> Self {
        self.sort = Some(sort);
        self
    }

    pub(crate) fn index(mut self, name: &'static str) -> Self {
        self.index = Some(name);
        self
    }

    pub(crate) fn residual(mut self, fields: &'static [&'static str]) -> Self {
        self.residual = fields;
        self
    }
}

/// Every query the store runs (the filters of reads, updates and deletes), with sample
/// values. Inserts are not listed: they maintain every index of their collection.
pub fn known_queries() -> Vec<KnownQuery> {
    use super::reports as r;
    vec![
        r::tenant_devices_query("tenant"),
        r::sent_query("device", 0, 1),
        r::statuses_query("device", 1, 0, 1),
        r::jobs_query("device", 0, 1, None),
        r::jobs_query("device", 0, 1, Some("failed")),
        d::tenant_by_key_query("hash"),
        d::list_tenants_query(),
        d::device_query("get_device", "device"),
        d::device_query("set_last_seen", "device"),
        d::device_query("delete_device", "device"),
        d::device_by_address_query("tenant", "+15550001"),
        d::list_devices_query("tenant", "device"),
        d::device_counts_query(),
        d::contacts_query("list_contacts", "device"),
        d::contacts_query("delete_device", "device"),
        d::contacts_in_query("device", &["+15550001", "+15550002"]),
        d::contact_query("device", "+15550001"),
        d::get_group_query("group"),
        d::group_at_version_query("group", 3),
        d::group_member_query("group", "+15550001"),
        d::tenant_group_query("group", "tenant"),
        i::last_seq_query("device"),
        i::read_inbox_query("device", 10),
        i::messages_query("read_inbox", &["m1", "m2"]),
        i::rows_at_query("device", &[4, 5]),
        i::inbox_messages_query("device", &["m1", "m2"]),
        i::copies_query("m1"),
        i::addresses_query(&["d1", "d2"]),
        i::statuses_query("device", "m1"),
        i::recent_client_ids_query("device"),
        i::sends_by_client_id_query("device", "req-1"),
        i::held_messages_query("device"),
        i::holders_query(&["m1", "m2"]),
        i::inbox_query("device"),
        f::into_fence_query("device", 4, 2),
        f::stale_rows_query("device", 4, 67, 2),
        c::owner_query("delete_device", "device"),
        c::node_query("put_node", "node"),
        c::node_query("renew_node", "node"),
        c::node_query("remove_node", "node"),
        c::nodes_query(),
        c::owner_query("get_owner", "device"),
        c::owner_at_epoch_query("device", 3),
        c::held_owner_query("device", "node", 3),
        j::job_query("get_job", "job", &[]),
        j::owned_job_query("job", "node"),
        j::claims_query("renew_job_claims", "node"),
        j::claims_query("release_job_claims", "node"),
        j::lapsed_claims_query(1_000),
        j::lane_query(Priority::Low),
        j::lanes_query(),
        j::job_query("cancel_job", "job", &["waiting", "delayed"]),
        j::body_query("job_body", &["body"]),
        j::body_query("prune_jobs", &["b1", "b2"]),
        j::queue_tail_query("tenant", Priority::Normal),
        j::active_query(),
        j::due_query(1_000),
        j::claimable_query(&[]),
        j::claimable_query(&[Priority::Low]),
        j::claimed_query(&["j1", "j2"], "token"),
        j::device_pending_query("device"),
        j::prunable_query(1_000),
        j::body_refs_query(&["b1", "b2"]),
        j::pending_query(),
        j::all_jobs_query(),
        j::totals_query(),
    ]
}

/// One index as the server lists it.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStat {
    /// Its name on the server.
    pub name: String,
    /// Key fields with their direction (`device_id:1`).
    pub keys: Vec<String>,
    /// Whether it enforces uniqueness.
    pub unique: bool,
    /// Its partial filter, if the server reports one.
    pub partial: Option<serde_json::Value>,
    /// The definition in the store's index list it matches (`None`: not the store's).
    pub defined_as: Option<&'static str>,
    /// Operations of the store meant to use it.
    pub used_by: Vec<&'static str>,
    /// Uses since the server started (`$indexStats`; `None` where unsupported).
    pub accesses: Option<u64>,
}

/// One collection.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionStat {
    /// Collection name.
    pub name: String,
    /// Documents.
    pub documents: Option<u64>,
    /// Bytes of the documents (uncompressed).
    pub size_bytes: Option<u64>,
    /// Bytes on disk.
    pub storage_bytes: Option<u64>,
    /// Bytes of its indexes.
    pub index_bytes: Option<u64>,
    /// Its indexes.
    pub indexes: Vec<IndexStat>,
}

/// The winning plan of a query, as `explain` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    /// Stage names, outermost first (`FETCH`, `IXSCAN`, …).
    pub stages: Vec<String>,
    /// Indexes the plan scans.
    pub indexes: Vec<String>,
}

impl PlanSummary {
    /// Whether the plan reads the whole collection.
    pub fn scans_collection(&self) -> bool {
        self.stages.iter().any(|s| s == "COLLSCAN")
    }

    /// Whether the plan reads through an index (`IXSCAN`, or an `_id` lookup).
    pub fn uses_index(&self) -> bool {
        self.stages.iter().any(|s| {
            s.contains("IXSCAN")
                || s == "IDHACK"
                || s == "COUNT_SCAN"
                || s == "DISTINCT_SCAN"
                || s.starts_with("EXPRESS")
        }) || !self.indexes.is_empty()
    }
}

/// One known query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryStat {
    /// Store operation.
    pub operation: &'static str,
    /// Collection.
    pub collection: &'static str,
    /// The filter (sample values).
    pub filter: serde_json::Value,
    /// The order asked for.
    pub sort: Option<serde_json::Value>,
    /// The index meant to serve it.
    pub index: Option<&'static str>,
    /// The server's winning plan (`None` where it does not explain queries).
    pub plan: Option<PlanSummary>,
}

/// Everything `GET /admin/db/stats` reports for the MongoDB store.
#[derive(Debug, Clone, Serialize)]
pub struct MongoStats {
    /// `mongodb`.
    pub backend: &'static str,
    /// Database name.
    pub database: String,
    /// The server's version (`buildInfo`), if it tells.
    pub server_version: Option<String>,
    /// Every collection of the store.
    pub collections: Vec<CollectionStat>,
    /// Indexes of the store's list the server does not have (`collection.name`).
    pub missing_indexes: Vec<String>,
    /// Every known query with its plan.
    pub queries: Vec<QueryStat>,
    /// Whether the server explains queries the MongoDB way (plan stages).
    pub explain_supported: bool,
}

fn json(d: &Document) -> serde_json::Value {
    Bson::Document(d.clone()).into_relaxed_extjson()
}

fn as_u64(d: &Document, key: &str) -> Option<u64> {
    d.get(key)
        .and_then(bson_i64)
        .and_then(|n| u64::try_from(n).ok())
}

/// Which definition a listed index is: by name, else by key (some servers rename).
fn definition(collection: &str, name: &str, keys: &Document) -> Option<&'static IndexDef> {
    INDEXES
        .iter()
        .find(|d| d.collection == collection && d.name == name)
        .or_else(|| {
            INDEXES
                .iter()
                .find(|d| d.collection == collection && d.has_keys(keys))
        })
}

/// The stages and index names of a winning plan, outermost first; `None` if the plan
/// is not in MongoDB's form (a server that explains another way).
pub(crate) fn summarize_plan(plan: &Bson) -> Option<PlanSummary> {
    fn walk(d: &Document, out: &mut PlanSummary) {
        if let Ok(stage) = d.get_str("stage") {
            out.stages.push(stage.to_owned());
        }
        if let Ok(name) = d.get_str("indexName") {
            out.indexes.push(name.to_owned());
        }
        for child in ["queryPlan", "inputStage", "outerStage", "innerStage"] {
            if let Ok(c) = d.get_document(child) {
                walk(c, out);
            }
        }
        if let Ok(children) = d.get_array("inputStages") {
            for c in children {
                if let Bson::Document(c) = c {
                    walk(c, out);
                }
            }
        }
    }
    let Bson::Document(d) = plan else {
        return None;
    };
    if !d.contains_key("stage") && !d.contains_key("queryPlan") {
        return None;
    }
    let mut out = PlanSummary {
        stages: Vec::new(),
        indexes: Vec::new(),
    };
    walk(d, &mut out);
    (!out.stages.is_empty()).then_some(out)
}

impl MongoStore {
    /// Statistics for `/admin/db/stats`. A sub-command the server does not support
    /// leaves its part `None`; only a server that cannot be reached fails the call.
    pub async fn stats(&self) -> StoreResult<MongoStats> {
        let db = self.inner.db();
        // Reaching the server is what the call needs; every part after it is optional.
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(super::map_err)?;
        let queries = known_queries();
        let server_version = db
            .run_command(doc! { "buildInfo": 1 })
            .await
            .ok()
            .and_then(|b| b.get_str("version").ok().map(str::to_owned));
        let mut used_by: HashMap<(&str, &str), Vec<&'static str>> = HashMap::new();
        for q in &queries {
            if let Some(index) = q.index {
                let ops = used_by.entry((q.collection, index)).or_default();
                if !ops.contains(&q.operation) {
                    ops.push(q.operation);
                }
            }
        }

        let mut collections = Vec::with_capacity(coll::ALL.len());
        let mut found_defs: Vec<&'static str> = Vec::new();
        for name in coll::ALL {
            let c = db.collection::<Document>(name);
            let storage = match aggregate_all(
                &c,
                vec![doc! { "$collStats": { "storageStats": {} } }],
            )
            .await
            {
                Ok(rows) => rows
                    .into_iter()
                    .next()
                    .and_then(|r| r.get_document("storageStats").ok().cloned()),
                Err(_) => db.run_command(doc! { "collStats": name }).await.ok(),
            };
            let documents = match storage.as_ref().and_then(|s| as_u64(s, "count")) {
                Some(n) => Some(n),
                None => c.estimated_document_count().await.ok(),
            };
            let accesses: Option<HashMap<String, u64>> =
                match aggregate_all(&c, vec![doc! { "$indexStats": {} }]).await {
                    Ok(rows) => Some(
                        rows.into_iter()
                            .filter_map(|r| {
                                let name = r.get_str("name").ok()?.to_owned();
                                let ops = r
                                    .get_document("accesses")
                                    .ok()
                                    .and_then(|a| as_u64(a, "ops"))?;
                                Some((name, ops))
                            })
                            .collect(),
                    ),
                    Err(_) => None,
                };
            let listed: Vec<mongodb::IndexModel> = match c.list_indexes().await {
                Ok(cursor) => cursor.try_collect().await.unwrap_or_default(),
                // A collection not created yet has no indexes.
                Err(_) => Vec::new(),
            };
            let indexes = listed
                .into_iter()
                .map(|m| {
                    let options = m.options.unwrap_or_default();
                    let index_name = options.name.unwrap_or_default();
                    let def = if index_name == super::indexes::ID_INDEX {
                        None
                    } else {
                        definition(name, &index_name, &m.keys)
                    };
                    if let Some(d) = def {
                        found_defs.push(d.name);
                    }
                    let defined = def.map_or(
                        (index_name == super::indexes::ID_INDEX)
                            .then_some(super::indexes::ID_INDEX),
                        |d| Some(d.name),
                    );
                    IndexStat {
                        keys: m
                            .keys
                            .iter()
                            .map(|(k, v)| format!("{k}:{}", bson_i64(v).unwrap_or(1)))
                            .collect(),
                        unique: options.unique.unwrap_or(false),
                        partial: options.partial_filter_expression.as_ref().map(json),
                        defined_as: defined,
                        used_by: defined
                            .and_then(|d| used_by.get(&(name, d)).cloned())
                            .unwrap_or_default(),
                        accesses: accesses.as_ref().and_then(|a| a.get(&index_name).copied()),
                        name: index_name,
                    }
                })
                .collect();
            collections.push(CollectionStat {
                name: name.to_owned(),
                documents,
                size_bytes: storage.as_ref().and_then(|s| as_u64(s, "size")),
                storage_bytes: storage.as_ref().and_then(|s| as_u64(s, "storageSize")),
                index_bytes: storage.as_ref().and_then(|s| as_u64(s, "totalIndexSize")),
                indexes,
            });
        }
        let missing_indexes = INDEXES
            .iter()
            .filter(|d| !found_defs.contains(&d.name))
            .map(|d| format!("{}.{}", d.collection, d.name))
            .collect();

        let mut explain_supported = false;
        let mut query_stats = Vec::with_capacity(queries.len());
        for q in queries {
            let plan = self.explain(&q).await;
            explain_supported |= plan.is_some();
            query_stats.push(QueryStat {
                operation: q.operation,
                collection: q.collection,
                filter: json(&q.filter),
                sort: q.sort.as_ref().map(json),
                index: q.index,
                plan,
            });
        }
        Ok(MongoStats {
            backend: "mongodb",
            database: db.name().to_owned(),
            server_version,
            collections,
            missing_indexes,
            queries: query_stats,
            explain_supported,
        })
    }

    /// The winning plan of a known query (as a `find` with its filter and order), or
    /// `None` if the server does not explain it the MongoDB way.
    pub async fn explain(&self, q: &KnownQuery) -> Option<PlanSummary> {
        let mut find = doc! { "find": q.collection, "filter": q.filter.clone(), "limit": 1_i64 };
        if let Some(sort) = &q.sort {
            find.insert("sort", sort.clone());
        }
        let reply = self
            .inner
            .db()
            .run_command(doc! { "explain": find, "verbosity": "queryPlanner" })
            .await
            .ok()?;
        let planner = reply.get_document("queryPlanner").ok()?;
        summarize_plan(planner.get("winningPlan")?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_summarized() {
        let plan = Bson::Document(doc! {
            "stage": "LIMIT",
            "inputStage": { "stage": "FETCH", "inputStage": {
                "stage": "IXSCAN", "indexName": "inbox_seq", "keyPattern": { "device_id": 1, "seq": 1 },
            } },
        });
        let s = summarize_plan(&plan).unwrap();
        assert_eq!(s.stages, ["LIMIT", "FETCH", "IXSCAN"]);
        assert_eq!(s.indexes, ["inbox_seq"]);
        assert!(s.uses_index() && !s.scans_collection());
        // Slot-based engine (7.0+): the classic tree sits under `queryPlan`.
        let sbe =
            Bson::Document(doc! { "queryPlan": { "stage": "COLLSCAN" }, "slotBasedPlan": {} });
        assert!(summarize_plan(&sbe).unwrap().scans_collection());
        // Another server's explain format (a list of SQL plan lines) is not MongoDB's.
        let other = Bson::Array(vec![Bson::Document(doc! { "detail": "SCAN inbox" })]);
        assert!(summarize_plan(&other).is_none());
    }

    #[test]
    fn every_known_query_names_a_defined_index() {
        for q in known_queries() {
            if let Some(name) = q.index {
                assert!(
                    super::super::indexes::find(q.collection, name).is_some(),
                    "{}: no index {name} on {}",
                    q.operation,
                    q.collection
                );
            }
        }
    }
}
