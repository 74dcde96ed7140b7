//! Data URLs, base64 and MIME types for media parts.

use serde_json::Map;

use crate::gemini::{Blob, FileData, Part};

/// An `inlineData` part.
pub(crate) fn inline(mime_type: String, data: String) -> Part {
    Part {
        inline_data: Some(Blob {
            mime_type,
            data,
            extra: Map::new(),
        }),
        ..Part::default()
    }
}

/// Splits `data:[<mime>][;params][;base64],<data>` into the MIME type and base64 data
/// (percent-encoded data is decoded and base64-encoded).
pub(crate) fn parse_data_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| "not a data: URL".to_owned())?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| "a data: URL needs a ',' before its data".to_owned())?;
    let mut fields = meta.split(';');
    let mime = fields
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_base64 = fields.any(|f| f.trim().eq_ignore_ascii_case("base64"));
    if is_base64 {
        let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if data.is_empty() {
            return Err("the data: URL holds no data".to_owned());
        }
        if !data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
        {
            return Err("the data: URL's base64 data is not valid base64".to_owned());
        }
        Ok((mime, data))
    } else {
        Ok((mime, crate::base64::encode(&percent_decode(data))))
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The MIME type of a file name or URL path by its extension.
pub(crate) fn mime_of_name(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "json" => "application/json",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "aac" => "audio/aac",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "webm" => "video/webm",
        _ => return None,
    })
}

/// A part for a URL: data URLs become `inlineData`, http(s) URLs `fileData`.
pub(crate) fn url_part(url: &str, fallback_mime: &str) -> Result<Part, String> {
    if url.starts_with("data:") {
        let (mime, data) = parse_data_url(url)?;
        let mime = if mime.is_empty() {
            fallback_mime.to_owned()
        } else {
            mime
        };
        return Ok(inline(mime, data));
    }
    if url.starts_with("https://") || url.starts_with("http://") || url.starts_with("gs://") {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        return Ok(Part {
            file_data: Some(FileData {
                mime_type: mime_of_name(path).map(str::to_owned),
                file_uri: url.to_owned(),
                extra: Map::new(),
            }),
            ..Part::default()
        });
    }
    Err("expected a data: URL or an http(s) URL".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_parse_in_both_encodings() {
        assert_eq!(
            parse_data_url("data:image/png;base64,iVBOR w0=").unwrap(),
            ("image/png".to_owned(), "iVBORw0=".to_owned())
        );
        assert_eq!(
            parse_data_url("data:text/plain;charset=utf-8,hi%20there").unwrap(),
            ("text/plain".to_owned(), "aGkgdGhlcmU=".to_owned())
        );
        assert!(parse_data_url("data:image/png;base64").is_err());
        assert!(parse_data_url("data:image/png;base64,!!!").is_err());
    }
}
