//! Parsing Gemini REST paths: `/v1beta/models/gemini-2.5-flash:streamGenerateContent`.

use std::fmt;

/// A Gemini model method named in a path after the `:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// `:generateContent`
    GenerateContent,
    /// `:streamGenerateContent`
    StreamGenerateContent,
    /// `:countTokens`
    CountTokens,
    /// `:embedContent`
    EmbedContent,
    /// `:batchEmbedContents`
    BatchEmbedContents,
    /// Any other method (kept verbatim in [`GeminiPath::method_name`]).
    Other,
}

impl Method {
    /// Parses a method name.
    pub fn parse(name: &str) -> Method {
        match name {
            "generateContent" => Method::GenerateContent,
            "streamGenerateContent" => Method::StreamGenerateContent,
            "countTokens" => Method::CountTokens,
            "embedContent" => Method::EmbedContent,
            "batchEmbedContents" => Method::BatchEmbedContents,
            _ => Method::Other,
        }
    }

    /// The method's wire name (empty for [`Method::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GenerateContent => "generateContent",
            Method::StreamGenerateContent => "streamGenerateContent",
            Method::CountTokens => "countTokens",
            Method::EmbedContent => "embedContent",
            Method::BatchEmbedContents => "batchEmbedContents",
            Method::Other => "",
        }
    }

    /// Whether the method generates content (and so is subject to token quotas and resume).
    pub fn is_generate(self) -> bool {
        matches!(
            self,
            Method::GenerateContent | Method::StreamGenerateContent
        )
    }
}

/// A parsed Gemini path: API version, model and (optional) method.
///
/// Stored in request extensions by layers that parse it, so later layers need not parse again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GeminiPath {
    /// `v1beta` or `v1` (or another version segment).
    pub version: String,
    /// The model id without the `models/` prefix, e.g. `gemini-2.5-flash`. Empty for the
    /// models list (`/v1beta/models`).
    pub model: String,
    /// The method, if the path names one.
    pub method: Option<Method>,
    /// The raw method name (for [`Method::Other`]).
    pub method_name: Option<String>,
}

impl GeminiPath {
    /// Parses `/{version}/models[/{model}[:{method}]]`, also tunedModels. Returns `None` for
    /// anything else.
    ///
    /// ```
    /// use tower_gemini::gemini::{GeminiPath, Method};
    ///
    /// let p = GeminiPath::parse("/v1beta/models/gemini-2.5-flash:streamGenerateContent").unwrap();
    /// assert_eq!(p.model, "gemini-2.5-flash");
    /// assert_eq!(p.method, Some(Method::StreamGenerateContent));
    /// assert!(GeminiPath::parse("/v1/chat/completions").is_none());
    /// ```
    pub fn parse(path: &str) -> Option<GeminiPath> {
        GeminiPathRef::parse(path).map(|p| p.into_owned())
    }

    /// Whether this is the models list.
    pub fn is_model_list(&self) -> bool {
        self.model.is_empty()
    }
}

/// A parsed Gemini path borrowed from the path it was parsed from: what [`GeminiPath`] holds,
/// without allocating. Layers that only look at the model or method parse this.
///
/// ```
/// use tower_gemini::gemini::{GeminiPathRef, Method};
///
/// let p = GeminiPathRef::parse("/v1beta/models/gemini-2.5-flash:generateContent").unwrap();
/// assert_eq!(p.model, "gemini-2.5-flash");
/// assert_eq!(p.method, Some(Method::GenerateContent));
/// assert_eq!(p.into_owned().model, "gemini-2.5-flash");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GeminiPathRef<'a> {
    /// `v1beta` or `v1` (or another version segment).
    pub version: &'a str,
    /// The model id without the `models/` prefix; empty for the models list.
    pub model: &'a str,
    /// The method, if the path names one.
    pub method: Option<Method>,
    /// The raw method name.
    pub method_name: Option<&'a str>,
}

impl<'a> GeminiPathRef<'a> {
    /// Parses like [`GeminiPath::parse`].
    pub fn parse(path: &'a str) -> Option<GeminiPathRef<'a>> {
        let rest = path.strip_prefix('/')?;
        let (version, rest) = rest.split_once('/')?;
        if !(version.starts_with("v1") || version.starts_with("v2")) || version.contains(':') {
            return None;
        }
        let rest = rest
            .strip_prefix("models")
            .or_else(|| rest.strip_prefix("tunedModels"))?;
        if rest.is_empty() || rest == "/" {
            return Some(GeminiPathRef {
                version,
                model: "",
                method: None,
                method_name: None,
            });
        }
        let rest = rest.strip_prefix('/')?;
        let (model, method) = match rest.split_once(':') {
            Some((m, meth)) => (m, Some(meth)),
            None => (rest, None),
        };
        if model.is_empty()
            || model.contains('/')
            || method.is_some_and(|m| m.is_empty() || m.contains('/'))
        {
            return None;
        }
        Some(GeminiPathRef {
            version,
            model,
            method: method.map(Method::parse),
            method_name: method,
        })
    }

    /// The owned [`GeminiPath`].
    pub fn into_owned(self) -> GeminiPath {
        GeminiPath {
            version: self.version.to_owned(),
            model: self.model.to_owned(),
            method: self.method,
            method_name: self.method_name.map(str::to_owned),
        }
    }

    /// Whether this is the models list.
    pub fn is_model_list(&self) -> bool {
        self.model.is_empty()
    }
}

impl fmt::Display for GeminiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/models", self.version)?;
        if !self.model.is_empty() {
            write!(f, "/{}", self.model)?;
        }
        if let Some(m) = &self.method_name {
            write!(f, ":{m}")?;
        }
        Ok(())
    }
}

/// Strips an optional `models/` prefix from a model id.
pub fn strip_models_prefix(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_methods() {
        let p = GeminiPath::parse("/v1beta/models/gemini-2.5-pro:generateContent").unwrap();
        assert_eq!(p.version, "v1beta");
        assert_eq!(p.model, "gemini-2.5-pro");
        assert_eq!(p.method, Some(Method::GenerateContent));
        let p = GeminiPath::parse("/v1/models/text-embedding-004:batchEmbedContents").unwrap();
        assert_eq!(p.method, Some(Method::BatchEmbedContents));
        let p = GeminiPath::parse("/v1beta/models/x:somethingNew").unwrap();
        assert_eq!(p.method, Some(Method::Other));
        assert_eq!(p.method_name.as_deref(), Some("somethingNew"));
    }

    #[test]
    fn parses_lists_and_gets() {
        assert!(GeminiPath::parse("/v1beta/models").unwrap().is_model_list());
        assert!(
            GeminiPath::parse("/v1beta/models/")
                .unwrap()
                .is_model_list()
        );
        let p = GeminiPath::parse("/v1beta/models/gemini-2.5-flash").unwrap();
        assert_eq!(p.method, None);
        assert_eq!(p.to_string(), "/v1beta/models/gemini-2.5-flash");
    }

    #[test]
    fn rejects_other_paths() {
        for p in [
            "",
            "/",
            "/health",
            "/v1/chat/completions",
            "/v1beta/files/abc",
            "/v1beta/models/:x",
            "/v1beta/models/a/b",
            "/x/models/y",
            "/v1beta/models/m:",
        ] {
            assert!(GeminiPath::parse(p).is_none(), "{p}");
        }
    }
}
