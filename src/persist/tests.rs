#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::*;
use crate::auth::{MemoryTokenStore, TokenStore};

/// A fresh directory under the system's temp dir (removed by the test when it passes).
#[cfg(feature = "sqlite")]
fn temp_dir(test: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "tower-gemini-{test}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What every store must do: keep, replace, tombstone, and give it all back.
async fn contract(store: &dyn AdminStore) {
    let key = KeyRecord::new("AIzaSyPersist-test-key-0000000000001");
    let other = KeyRecord::new("AIzaSyPersist-test-key-0000000000002");
    store.put_key(&key).await.unwrap();
    store.put_key(&other).await.unwrap();
    store.remove_key(&other.id).await.unwrap();
    store.remove_key("configured-key-id").await.unwrap();

    let alice = TokenRecord::new("sk-alice-token-000000000001", "alice", false);
    let bob = TokenRecord::new("sk-bob-token-00000000000002", "bob", false);
    store.put_token(&alice).await.unwrap();
    store.put_token(&bob).await.unwrap();
    store.revoke_token(&bob).await.unwrap();

    store.put_setting("policy", &json!({"a": 1})).await.unwrap();
    store.put_setting("gone", &json!(true)).await.unwrap();
    store.delete_setting("gone").await.unwrap();

    let state = store.load().await.unwrap();
    assert_eq!(state.keys, vec![key.clone()]);
    let mut removed = state.removed_keys.clone();
    removed.sort();
    let mut want = vec![other.id.clone(), "configured-key-id".to_owned()];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(state.tokens, vec![alice.clone()]);
    assert_eq!(state.revoked_tokens, vec![bob.clone()]);
    assert!(state.is_token_revoked("sk-bob-token-00000000000002"));
    assert!(!state.is_token_revoked("sk-alice-token-000000000001"));
    assert!(state.is_key_removed("configured-key-id"));
    assert_eq!(state.settings.len(), 1);
    assert_eq!(state.settings["policy"], json!({"a": 1}));

    // Putting a removed key back clears its tombstone.
    store.put_key(&other).await.unwrap();
    let state = store.load().await.unwrap();
    assert_eq!(state.keys.len(), 2);
    assert!(!state.is_key_removed(&other.id));

    // A restored digest authenticates the token it came from.
    let tokens = MemoryTokenStore::new();
    for t in &state.tokens {
        tokens.insert_digest(t.digest, t.id.as_str(), t.name.as_str(), t.admin);
    }
    assert_eq!(
        tokens
            .authenticate("sk-alice-token-000000000001")
            .unwrap()
            .name(),
        "alice"
    );
    assert!(tokens.authenticate("sk-bob-token-00000000000002").is_none());
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let store = AdminMemoryStore::new();
    contract(&store).await;
    assert!(!store.is_durable());
}

#[test]
fn key_records_mask_the_key_in_debug() {
    let r = KeyRecord::new("AIzaSyPersist-test-key-0000000000001");
    let text = format!("{r:?}");
    assert!(!text.contains("Persist-test-key"), "{text}");
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::usage::{Tokens, UsageRecord, UsageSink};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_keeps_the_contract_across_reopen() {
        let dir = temp_dir("sqlite-contract");
        let path = dir.join("gateway.db");
        let store = AdminSqliteStore::open(&path).unwrap();
        contract(&store).await;
        drop(store);
        let again = AdminSqliteStore::open(&path).unwrap();
        let state = again.load().await.unwrap();
        assert_eq!(state.keys.len(), 2);
        assert_eq!(state.tokens.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_database_file_is_private_and_holds_no_client_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("sqlite-private");
        let path = dir.join("gateway.db");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = AdminSqliteStore::open(&path).unwrap();
            let token = TokenRecord::new("sk-never-in-clear-000000000001", "x", false);
            store.put_token(&token).await.unwrap();
        });
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("sk-never-in-clear"));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backup_is_a_readable_copy() {
        let dir = temp_dir("sqlite-backup");
        let store = AdminSqliteStore::open(dir.join("gateway.db")).unwrap();
        store
            .put_key(&KeyRecord::new("AIzaSyBackup-key-00000000000000001"))
            .await
            .unwrap();
        let (path, size) = store.backup().await.unwrap();
        assert!(size > 0);
        assert_eq!(path.parent(), Some(dir.as_path()));
        let copy = AdminSqliteStore::open(&path).unwrap();
        assert_eq!(copy.load().await.unwrap().keys.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn record(n: u64) -> UsageRecord {
        let mut r = UsageRecord::new("generateContent", "gemini-2.5-flash")
            .with_status(200)
            .with_client("client-1", "sk-a…0001")
            .with_key("0badf00d")
            .with_tokens(Tokens {
                prompt: n,
                output: 2 * n,
                thoughts: 3,
                cached: 1,
                total: 3 * n + 3,
            });
        r.request_id = Some(format!("req-{n}"));
        r.request_body = Some(bytes::Bytes::from_static(b"{\"prompt\":\"secret plans\"}"));
        r.upstream_attempts = 3;
        r.resumes = 1;
        r.model_version = Some("gemini-2.5-flash-preview-09-2025".to_owned());
        r
    }

    #[tokio::test]
    async fn a_log_made_before_model_version_gains_the_column() {
        let dir = temp_dir("request-log-migrate");
        let path = dir.join("gateway.db");
        {
            // The table as the previous release made it.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE requests (time_ms INTEGER NOT NULL, request_id TEXT,
                     client_id TEXT, client_name TEXT, key_id TEXT, model TEXT NOT NULL,
                     route TEXT NOT NULL, status INTEGER NOT NULL, stream INTEGER NOT NULL,
                     latency_ms INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
                     prompt_tokens INTEGER, output_tokens INTEGER, thought_tokens INTEGER,
                     cached_tokens INTEGER, total_tokens INTEGER, resumes INTEGER NOT NULL,
                     upstream_attempts INTEGER NOT NULL, key_retries INTEGER NOT NULL,
                     rate_limited INTEGER NOT NULL, completed INTEGER NOT NULL,
                     request_body TEXT);
                 INSERT INTO requests VALUES (CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 1000, 'old', NULL, NULL, NULL, 'm', 'r', 200, 0,
                     1, 1, NULL, NULL, NULL, NULL, NULL, 0, 1, 0, 0, 1, NULL);",
            )
            .unwrap();
        }
        let log = RequestLog::builder(&path)
            .flush_interval(Duration::from_millis(10))
            .open()
            .unwrap();
        log.record(&record(1));
        assert_eq!(rows(&path, 2).await, 2);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let versions: Vec<Option<String>> = conn
            .prepare("SELECT model_version FROM requests ORDER BY time_ms")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            versions,
            [None, Some("gemini-2.5-flash-preview-09-2025".to_owned())]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    async fn rows(path: &std::path::Path, n: i64) -> i64 {
        for _ in 0..200 {
            let conn = rusqlite::Connection::open(path).unwrap();
            let count: i64 = conn
                .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
                .unwrap();
            if count >= n {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        -1
    }

    #[tokio::test]
    async fn request_rows_are_written_in_batches_without_bodies_by_default() {
        let dir = temp_dir("request-log");
        let path = dir.join("gateway.db");
        let log = RequestLog::builder(&path)
            .flush_interval(Duration::from_millis(10))
            .open()
            .unwrap();
        for n in 1..=3 {
            log.record(&record(n));
        }
        assert_eq!(rows(&path, 3).await, 3);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let (prompt, output, thoughts, cached, retries, resumes, body, rid): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            Option<String>,
            String,
        ) = conn
            .query_row(
                "SELECT prompt_tokens, output_tokens, thought_tokens, cached_tokens, key_retries,
                        resumes, request_body, request_id
                 FROM requests WHERE request_id = 'req-2'",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!((prompt, output, thoughts, cached), (2, 4, 3, 1));
        assert_eq!((retries, resumes), (1, 1));
        assert_eq!(body, None);
        assert_eq!(rid, "req-2");
        assert_eq!(log.stats().written, 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn bodies_are_kept_only_when_asked() {
        let dir = temp_dir("request-log-bodies");
        let path = dir.join("gateway.db");
        let log = RequestLog::builder(&path)
            .flush_interval(Duration::from_millis(10))
            .log_bodies(true)
            .open()
            .unwrap();
        log.record(&record(1));
        assert_eq!(rows(&path, 1).await, 1);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let body: String = conn
            .query_row("SELECT request_body FROM requests", [], |r| r.get(0))
            .unwrap();
        assert!(body.contains("secret plans"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn old_rows_are_removed_by_the_retention_cleanup() {
        let dir = temp_dir("request-log-retention");
        let path = dir.join("gateway.db");
        let log = RequestLog::builder(&path)
            .flush_interval(Duration::from_millis(10))
            .retention(Some(Duration::from_secs(24 * 3600)))
            .open()
            .unwrap();
        log.record(&record(1));
        assert_eq!(rows(&path, 1).await, 1);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO requests (time_ms, model, route, status, stream, latency_ms,
                 duration_ms, resumes, upstream_attempts, key_retries, rate_limited, completed)
             VALUES (1000, 'm', 'r', 200, 0, 1, 1, 0, 1, 0, 0, 1)",
            [],
        )
        .unwrap();
        assert_eq!(
            log.remove_older_than(Duration::from_secs(24 * 3600))
                .unwrap(),
            1
        );
        assert_eq!(rows(&path, 1).await, 1);
        assert_eq!(log.stats().removed, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_locked_database_drops_rows_instead_of_waiting() {
        let dir = temp_dir("request-log-locked");
        let path = dir.join("gateway.db");
        let log = RequestLog::builder(&path)
            .queue(4)
            .batch(1)
            .flush_interval(Duration::from_millis(1))
            .open()
            .unwrap();
        let locker = rusqlite::Connection::open(&path).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let start = std::time::Instant::now();
        for n in 0..100 {
            log.record(&record(n));
        }
        assert!(start.elapsed() < Duration::from_secs(1), "record waited");
        assert!(log.stats().dropped >= 90, "{:?}", log.stats());
        locker.execute_batch("ROLLBACK").unwrap();
        std::fs::remove_dir_all(dir).ok();
    }

    /// Waits until the log has written `n` rows.
    async fn written(log: &RequestLog, n: u64) {
        for _ in 0..200 {
            if log.stats().written >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {:?} rows written", log.stats());
    }

    #[tokio::test]
    async fn query_reads_rows_newest_first_filtered_and_paged() {
        use crate::persist::{ErrorFilter, RequestQuery, StatusFilter};
        let dir = temp_dir("request-log-query");
        let path = dir.join("gateway.db");
        let log = RequestLog::builder(&path)
            .flush_interval(Duration::from_millis(10))
            .log_bodies(true)
            .open()
            .unwrap();
        // 1..=3: 200s on flash by client-1 with key k1; 4: an upstream 429 on pro by client-2
        // with key k2, with its message; 5: the gateway's own 429; 6: a 401 without a client.
        for n in 1..=3 {
            log.record(&record(n));
        }
        let mut upstream = UsageRecord::new("generateContent", "gemini-2.5-pro")
            .with_status(429)
            .with_client("client-2", "sk-b…0002")
            .with_key("k2");
        upstream.error = Some("RESOURCE_EXHAUSTED: quota".to_owned());
        log.record(&upstream);
        let mut limited = UsageRecord::new("generateContent", "gemini-2.5-pro")
            .with_status(429)
            .with_client("client-2", "sk-b…0002");
        limited.rate_limited = true;
        log.record(&limited);
        log.record(&UsageRecord::new("generateContent", "gemini-2.5-flash").with_status(401));
        written(&log, 6).await;

        let all = log.query(&RequestQuery::new()).unwrap();
        assert_eq!(all.len(), 6);
        let statuses: Vec<u16> = all.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [401, 429, 429, 200, 200, 200], "newest first");
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let first = &all[5];
        assert_eq!(first.request_id.as_deref(), Some("req-1"));
        assert_eq!(first.client_id.as_deref(), Some("sk-a…0001"));
        assert_eq!(first.tokens.unwrap().total, 6);
        assert_eq!(
            (first.resumes, first.upstream_attempts, first.key_retries),
            (1, 3, 1)
        );
        assert_eq!(
            first.model_version.as_deref(),
            Some("gemini-2.5-flash-preview-09-2025")
        );
        // Never the request body, even when the log keeps it.
        let json = first.to_json().to_string();
        assert!(!json.contains("secret plans"), "{json}");
        assert_eq!(all[2].error.as_deref(), Some("RESOURCE_EXHAUSTED: quota"));
        assert_eq!(all[2].to_json()["account"]["name"], "client-2");
        assert_eq!(all[0].to_json()["account"], Value::Null);

        let ids = |q: RequestQuery| -> Vec<u16> {
            log.query(&q).unwrap().iter().map(|r| r.status).collect()
        };
        assert_eq!(
            ids(RequestQuery::new().status(StatusFilter::Exact(429))),
            [429, 429]
        );
        assert_eq!(
            ids(RequestQuery::new().status(StatusFilter::Class(4))),
            [401, 429, 429]
        );
        assert_eq!(
            ids(RequestQuery::new().status(StatusFilter::Class(2))).len(),
            3
        );
        assert_eq!(
            ids(RequestQuery::new().errors(ErrorFilter::Any)),
            [401, 429, 429]
        );
        let upstream_only = log
            .query(&RequestQuery::new().errors(ErrorFilter::Upstream))
            .unwrap();
        assert_eq!(upstream_only.len(), 1);
        assert_eq!(upstream_only[0].key_id.as_deref(), Some("k2"));
        assert_eq!(ids(RequestQuery::new().model("gemini-2.5-pro")), [429, 429]);
        assert_eq!(ids(RequestQuery::new().key("0badf00d")).len(), 3);
        assert_eq!(ids(RequestQuery::new().account("sk-b…0002")), [429, 429]);
        assert!(
            ids(RequestQuery::new().account("client-2")).is_empty(),
            "ids, not names"
        );
        assert_eq!(
            ids(RequestQuery::new()
                .model("gemini-2.5-flash")
                .errors(ErrorFilter::Any)),
            [401]
        );
        // Paging: two at a time, each page older than the last row of the one before.
        let page1 = log.query(&RequestQuery::new().limit(2)).unwrap();
        let page2 = log
            .query(&RequestQuery::new().limit(2).before(page1[1].id))
            .unwrap();
        let page3 = log
            .query(&RequestQuery::new().limit(2).before(page2[1].id))
            .unwrap();
        let page4 = log
            .query(&RequestQuery::new().limit(2).before(page3[1].id))
            .unwrap();
        let paged: Vec<i64> = [page1, page2, page3]
            .iter()
            .flatten()
            .map(|r| r.id)
            .collect();
        assert_eq!(paged, all.iter().map(|r| r.id).collect::<Vec<_>>());
        assert!(page4.is_empty());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn status_filters_parse_strictly() {
        use crate::persist::StatusFilter;
        assert_eq!(StatusFilter::parse("429"), Some(StatusFilter::Exact(429)));
        assert_eq!(StatusFilter::parse("5xx"), Some(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::parse("4XX"), Some(StatusFilter::Class(4)));
        for bad in [
            "", "42", "4290", "600", "099", "6xx", "xx", "abc", "-1", "4x",
        ] {
            assert_eq!(StatusFilter::parse(bad), None, "{bad}");
        }
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;

    async fn redis_url() -> Option<String> {
        let Ok(url) = std::env::var("REDIS_URL") else {
            println!("skipping: no redis at REDIS_URL (unset)");
            return None;
        };
        match tokio::time::timeout(Duration::from_secs(3), AdminRedisStore::connect(&url)).await {
            Ok(Ok(_)) => Some(url),
            _ => {
                println!("skipping: no redis at {url}");
                None
            }
        }
    }

    #[tokio::test]
    async fn redis_store_keeps_the_contract() {
        let Some(url) = redis_url().await else { return };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = format!("tower-gemini-test:admin:{}:{nanos}", std::process::id());
        let store = AdminRedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix(&prefix);
        contract(&store).await;
        let again = AdminRedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix(&prefix);
        assert_eq!(again.load().await.unwrap().tokens.len(), 1);
    }
}
