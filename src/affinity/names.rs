//! What a request does with project-bound resources, read once from its path and body.

use http::Method;
use serde_json::Value;

use crate::credential::query_param;

/// The resource collections that can be listed.
pub(super) const LISTED: [&str; 4] = ["files", "cachedContents", "batches", "fileSearchStores"];

/// What a request does, for the affinity layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// `POST /upload/{v}/files` with `X-Goog-Upload-Protocol: resumable` and command `start`.
    UploadStart,
    /// Bytes for the resumable upload session of this gateway id.
    UploadBytes(String),
    /// Any other upload (`multipart`, `raw`): the answer holds the new file.
    UploadOther,
    /// A call whose answer is a new resource (`POST cachedContents`,
    /// `:batchGenerateContent`, `:asyncBatchEmbedContent`, `:predictLongRunning`).
    Create,
    /// `GET` of a collection of [`LISTED`].
    List(&'static str),
    /// One resource by name (`files/abc`), with its method verb (`cancel`) if any.
    One {
        /// The resource's name.
        name: String,
    },
    /// A part of a pinned resource (`fileSearchStores/s/documents/d`, its operations, an
    /// upload into it): it goes where the resource lives, and changes no pin.
    Within {
        /// The resource that holds it (`fileSearchStores/s`).
        name: String,
    },
    /// Anything else (`generateContent` and friends: their bodies may name resources).
    Other,
}

/// The path after its API version (`files/abc` for `/v1beta/files/abc`).
fn after_version(path: &str) -> Option<&str> {
    let p = path.strip_prefix("/upload").unwrap_or(path);
    ["/v1beta/", "/v1/", "/v1alpha/"]
        .iter()
        .find_map(|v| p.strip_prefix(v))
}

/// Classifies a request from its method, path, query and upload headers.
pub(super) fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> Route {
    let Some(rest) = after_version(path) else {
        return Route::Other;
    };
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let store = file_search_store(rest);
    if path.starts_with("/upload/") {
        if let Some(id) = query.and_then(|q| query_param(q, "upload_id")) {
            return Route::UploadBytes(id);
        }
        if header("x-goog-upload-protocol") == "resumable"
            && header("x-goog-upload-command").contains("start")
        {
            return Route::UploadStart;
        }
        return Route::UploadOther;
    }
    if *method == Method::GET {
        if let Some(c) = LISTED.iter().find(|c| rest == **c) {
            return Route::List(c);
        }
    }
    if *method == Method::POST
        && (rest == "cachedContents"
            || rest == "interactions"
            || rest == "fileSearchStores"
            || rest.ends_with(":batchGenerateContent")
            || rest.ends_with(":asyncBatchEmbedContent")
            || rest.ends_with(":predictLongRunning"))
    {
        return Route::Create;
    }
    if let Some(name) = store {
        return if rest == name {
            Route::One { name }
        } else {
            Route::Within { name }
        };
    }
    let name = rest.split(':').next().unwrap_or_default();
    let is_one = [
        "files/",
        "cachedContents/",
        "batches/",
        "operations/",
        "interactions/",
    ]
    .iter()
    .any(|c| name.starts_with(c) && name.len() > c.len())
        || (name.starts_with("models/") && name.contains("/operations/"));
    if is_one {
        return Route::One {
            name: name.to_owned(),
        };
    }
    Route::Other
}

/// The file search store an upload goes into
/// (`/upload/v1beta/fileSearchStores/s:uploadToFileSearchStore`).
pub(super) fn upload_target(path: &str) -> Option<String> {
    path.starts_with("/upload/")
        .then(|| after_version(path).and_then(file_search_store))
        .flatten()
}

/// The file search store a path is in: `fileSearchStores/s` of `fileSearchStores/s`,
/// `fileSearchStores/s:importFile`, `fileSearchStores/s/documents/d`.
fn file_search_store(rest: &str) -> Option<String> {
    let id = rest.strip_prefix("fileSearchStores/")?;
    let id = id.split(['/', ':']).next().unwrap_or_default();
    (!id.is_empty()).then(|| format!("fileSearchStores/{id}"))
}

/// The resources a request body names: the files of `fileData.fileUri` parts and the cache
/// of `cachedContent`, anywhere in the JSON (batch requests nest whole requests).
pub(super) fn named_in_body(body: &[u8]) -> Vec<String> {
    // Most bodies name nothing: skip the parse.
    if memchr::memmem::find(body, b"fileUri").is_none()
        && memchr::memmem::find(body, b"cachedContent").is_none()
        && memchr::memmem::find(body, b"file_uri").is_none()
        && memchr::memmem::find(body, b"previous_interaction_id").is_none()
        && memchr::memmem::find(body, b"ileSearchStore").is_none()
        && memchr::memmem::find(body, b"file_search_store").is_none()
        && memchr::memmem::find(body, b"ileName").is_none()
        && memchr::memmem::find(body, b"file_name").is_none()
    {
        return Vec::new();
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&json, &mut out, 0);
    out.sort();
    out.dedup();
    out
}

fn walk(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("fileUri" | "file_uri", Value::String(uri)) => out.extend(file_name(uri)),
                    // `fileSearchStores/s:importFile` names the file to import.
                    ("fileName" | "file_name", Value::String(f)) if depth == 0 => {
                        out.extend(file_name(f));
                    }
                    ("previous_interaction_id", Value::String(id)) if depth == 0 => {
                        out.push(format!("interactions/{id}"));
                    }
                    ("fileSearchStoreNames" | "file_search_store_names", Value::Array(stores)) => {
                        out.extend(
                            stores
                                .iter()
                                .filter_map(Value::as_str)
                                .filter_map(file_search_store),
                        )
                    }
                    ("cachedContent" | "cached_content", Value::String(c)) => {
                        if let Some(i) = c.find("cachedContents/") {
                            out.push(c[i..].to_owned());
                        }
                    }
                    _ => walk(v, out, depth + 1),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, out, depth + 1)),
        _ => {}
    }
}

/// `files/abc` of `https://generativelanguage.googleapis.com/v1beta/files/abc` (or of
/// `files/abc` itself); `None` for other URIs (YouTube, `gs://`).
pub(super) fn file_name(uri: &str) -> Option<String> {
    let at = if uri.starts_with("files/") {
        0
    } else {
        uri.find("/files/")? + 1
    };
    let rest = &uri[at + "files/".len()..];
    let id: &str = rest.split(['/', '?', '#', ':']).next().unwrap_or_default();
    (!id.is_empty()).then(|| format!("files/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: Method, path: &str) -> Route {
        route(&method, path, None, &http::HeaderMap::new())
    }

    #[test]
    fn routes_are_told_apart() {
        assert_eq!(r(Method::GET, "/v1beta/files"), Route::List("files"));
        assert_eq!(
            r(Method::DELETE, "/v1beta/files/abc"),
            Route::One {
                name: "files/abc".into()
            }
        );
        assert_eq!(
            r(Method::POST, "/v1beta/batches/x:cancel"),
            Route::One {
                name: "batches/x".into()
            }
        );
        assert_eq!(
            r(Method::GET, "/v1beta/models/veo/operations/o1"),
            Route::One {
                name: "models/veo/operations/o1".into()
            }
        );
        assert_eq!(r(Method::POST, "/v1beta/cachedContents"), Route::Create);
        assert_eq!(
            r(Method::POST, "/v1beta/models/m:batchGenerateContent"),
            Route::Create
        );
        assert_eq!(
            r(Method::POST, "/v1beta/models/m:generateContent"),
            Route::Other
        );
        assert_eq!(r(Method::POST, "/upload/v1beta/files"), Route::UploadOther);
        assert_eq!(
            route(
                &Method::PUT,
                "/upload/v1beta/files",
                Some("upload_id=u1"),
                &http::HeaderMap::new()
            ),
            Route::UploadBytes("u1".into())
        );
    }

    #[test]
    fn file_search_stores_and_their_parts_are_told_apart() {
        let one = |n: &str| Route::One { name: n.into() };
        let within = |n: &str| Route::Within { name: n.into() };
        assert_eq!(r(Method::POST, "/v1beta/fileSearchStores"), Route::Create);
        assert_eq!(
            r(Method::GET, "/v1beta/fileSearchStores"),
            Route::List("fileSearchStores")
        );
        assert_eq!(
            r(Method::GET, "/v1beta/fileSearchStores/s1"),
            one("fileSearchStores/s1")
        );
        assert_eq!(
            r(Method::DELETE, "/v1beta/fileSearchStores/s1"),
            one("fileSearchStores/s1")
        );
        for path in [
            "/v1beta/fileSearchStores/s1:importFile",
            "/v1beta/fileSearchStores/s1/documents/d1",
            "/v1beta/fileSearchStores/s1/operations/o1",
            "/v1beta/fileSearchStores/s1/upload/operations/o1",
        ] {
            assert_eq!(
                r(Method::GET, path),
                within("fileSearchStores/s1"),
                "{path}"
            );
        }
        assert_eq!(
            upload_target("/upload/v1beta/fileSearchStores/s1:uploadToFileSearchStore"),
            Some("fileSearchStores/s1".into())
        );
        assert_eq!(upload_target("/upload/v1beta/files"), None);
        let body = br#"{"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/s1","fileSearchStores/s2/documents/x"]}}]}"#;
        assert_eq!(
            named_in_body(body),
            ["fileSearchStores/s1", "fileSearchStores/s2"]
        );
    }

    #[test]
    fn bodies_name_files_and_caches() {
        let body = br#"{"cachedContent":"cachedContents/c1","contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f1","mimeType":"text/plain"}},{"fileData":{"fileUri":"https://youtu.be/x"}}]}]}"#;
        assert_eq!(named_in_body(body), ["cachedContents/c1", "files/f1"]);
        assert!(named_in_body(br#"{"contents":[]}"#).is_empty());
        assert_eq!(file_name("files/abc"), Some("files/abc".into()));
    }
}
