//! Text to resources: multi-document YAML files, every problem with `file:line:column`.
//!
//! A file is read once, split into documents, and each document parsed twice: once into a
//! tree that only remembers where each key is (so that a problem found later, such as a
//! profile rule, can point at its line), and once into its typed resource. Hostile input
//! is bounded: file size, nesting depth, node count and alias expansion all have caps.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::model::{API_VERSION, Kind, Object, Resource};
use super::validate::{self, Severity};

/// Larger files are refused before they are parsed.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Nesting deeper than this is refused (resources need about eight levels).
pub const MAX_DEPTH: usize = 32;

/// One problem in a file, at a position. Line and column start at 1; 0 means the file as
/// a whole.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// A resource and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub resource: Resource,
    pub file: String,
    /// The line of the document's first key.
    pub line: u64,
}

/// What a file holds.
#[derive(Clone, Debug, Default)]
pub struct ParsedFile {
    /// The documents that parsed and are valid.
    pub resources: Vec<Located>,
    /// Problems that make the file unusable: while any is here, a controller keeps the
    /// file's last good resources.
    pub errors: Vec<Problem>,
    /// Charm profiles that break Juju's rules (SPEC §4): the resources still load.
    pub rule_violations: Vec<Problem>,
    /// Things a user should know but that change nothing (`name:` in a pasted profile).
    pub warnings: Vec<Problem>,
}

impl ParsedFile {
    fn append(&mut self, other: ParsedFile) {
        self.resources.extend(other.resources);
        self.errors.extend(other.errors);
        self.rule_violations.extend(other.rule_violations);
        self.warnings.extend(other.warnings);
    }

    pub fn error(file: &str, message: String) -> ParsedFile {
        ParsedFile {
            errors: vec![Problem {
                file: file.to_string(),
                line: 0,
                column: 0,
                message,
            }],
            ..ParsedFile::default()
        }
    }
}

/// Reads and parses one file. I/O errors and oversized files are problems too.
pub fn parse_file(path: &Path) -> ParsedFile {
    let name = path.display().to_string();
    match read_capped(path) {
        Ok(bytes) => parse_bytes(&name, bytes, None),
        Err(e) => ParsedFile::error(&name, e.to_string()),
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("file is larger than {MAX_FILE_BYTES} bytes: not parsed")]
    TooLarge,
}

/// A file's bytes, refused past the size cap before more than the cap is read (an 8 GB
/// sparse file costs 1 MiB).
pub fn read_capped(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    // Read one byte past the cap so that "too large" needs no separate stat.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// Parses the bytes of a file named `file` (text that is not UTF-8 is a problem),
/// reusing from `last` each document whose first line and text are unchanged since the
/// file was last parsed (an edit of one document parses that one); `last` then holds
/// this text's documents.
pub fn parse_bytes_again(file: &str, bytes: Vec<u8>, last: &mut Documents) -> ParsedFile {
    parse_bytes(file, bytes, Some(last))
}

fn parse_bytes(file: &str, bytes: Vec<u8>, last: Option<&mut Documents>) -> ParsedFile {
    match String::from_utf8(bytes) {
        Ok(text) => parse_text(file, &text, last),
        Err(e) => {
            if let Some(last) = last {
                *last = Documents::default();
            }
            ParsedFile::error(file, format!("not UTF-8 text: {e}"))
        }
    }
}

/// Parses the text of a file named `file`.
pub fn parse_str(file: &str, text: &str) -> ParsedFile {
    parse_text(file, text, None)
}

/// The documents of one file as last parsed, each by its first line and text, with what
/// it parsed to.
#[derive(Debug, Default)]
pub struct Documents(HashMap<(u64, Box<str>), ParsedFile>);

fn parse_text(file: &str, text: &str, mut last: Option<&mut Documents>) -> ParsedFile {
    let mut out = ParsedFile::default();
    if text.len() as u64 > MAX_FILE_BYTES {
        if let Some(last) = last {
            *last = Documents::default();
        }
        return ParsedFile::error(
            file,
            format!("file is larger than {MAX_FILE_BYTES} bytes: not parsed"),
        );
    }
    let mut now = HashMap::new();
    for doc in split_documents(text) {
        let Some(last) = last.as_deref_mut() else {
            parse_document(file, &doc, &mut out);
            continue;
        };
        let key = (doc.first_line, Box::<str>::from(doc.text));
        let parsed = last.0.remove(&key).unwrap_or_else(|| {
            let mut parsed = ParsedFile::default();
            parse_document(file, &doc, &mut parsed);
            parsed
        });
        out.append(parsed.clone());
        now.insert(key, parsed);
    }
    if let Some(last) = last {
        last.0 = now;
    }
    out
}

/// One YAML document of a file, and the 0-based line it starts on.
struct Document<'a> {
    first_line: u64,
    text: &'a str,
}

/// Splits a stream at its document markers. In YAML a `---` or `...` at the start of a
/// line is always a marker (block scalars must be indented and quoted scalars may not
/// hold one), so splitting on lines is exact. Content after `---` on the same line is
/// kept, with the marker blanked so columns stay true.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0u64;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = |m: &str| {
            bare.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if is_marker("---") || is_marker("...") {
            docs.push(Document {
                first_line: start_line,
                text: &text[start..offset],
            });
            if is_marker("---")
                && !bare[3..].trim().is_empty()
                && !bare[3..].trim().starts_with('#')
            {
                // `--- {inline: doc}`: keep the rest of the line in the next document.
                start = offset + 3;
                start_line = i as u64;
            } else {
                start = offset + line.len();
                start_line = i as u64 + 1;
            }
        }
        offset += line.len();
    }
    docs.push(Document {
        first_line: start_line,
        text: &text[start..],
    });
    docs
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 100_000;
    budget.max_events = 200_000;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES as usize;
    let mut aliases = serde_saphyr::options::AliasLimits::default();
    aliases.max_total_replayed_events = 100_000;
    aliases.max_replay_stack_depth = 16;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget);
    o.alias_limits = aliases;
    o.with_snippet = false;
    o
}

/// Just enough of a document to know what it is.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

fn parse_document(file: &str, doc: &Document<'_>, out: &mut ParsedFile) {
    let problem = |line: u64, column: u64, message: String| Problem {
        file: file.to_string(),
        line: if line == 0 { 0 } else { line + doc.first_line },
        column,
        message,
    };
    let from_yaml = |e: serde_saphyr::Error, path: Option<String>| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let message = yaml_message(&e);
        let message = match path {
            Some(p) if !p.is_empty() && p != "." => format!("{p}: {message}"),
            _ => message,
        };
        problem(line, column, message)
    };

    // What the document is, and where it starts. Where every key is (a parse of its own)
    // is read only when a problem needs a position.
    let header =
        match serde_saphyr::from_str_with_options::<Option<Spanned<Header>>>(doc.text, options()) {
            Ok(Some(h)) => h,
            Ok(None) => return, // an empty document (comments only)
            Err(e) => {
                return out
                    .errors
                    .push(shape_problem(doc.text, e, &problem, &from_yaml));
            }
        };
    let root = header.referenced;
    let root_line = root.line();
    let header = header.value;
    let tree = std::cell::OnceCell::new();
    let at = |path: &[String]| {
        let tree = tree.get_or_init(|| {
            serde_saphyr::from_str_with_options::<Node>(doc.text, options()).unwrap_or(Node::Scalar)
        });
        let l = tree.locate(path).unwrap_or(root);
        (l.line(), l.column())
    };
    match header.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            let (l, c) = at(&["apiVersion".into()]);
            return out.errors.push(problem(
                l,
                c,
                format!("apiVersion: {other:?} is not served here (expected {API_VERSION})"),
            ));
        }
        None => {
            return out.errors.push(problem(
                root.line(),
                root.column(),
                format!("apiVersion: missing (expected {API_VERSION})"),
            ));
        }
    }
    let kind = match header.kind.as_deref().map(|k| (k, Kind::parse(k))) {
        Some((_, Some(k))) => k,
        Some((other, None)) => {
            let (l, c) = at(&["kind".into()]);
            return out.errors.push(problem(
                l,
                c,
                format!(
                    "kind: unknown kind {other:?} (expected one of Application, Machine, Container)"
                ),
            ));
        }
        None => {
            return out.errors.push(problem(
                root.line(),
                root.column(),
                "kind: missing (expected one of Application, Machine, Container)".into(),
            ));
        }
    };

    let resource = match kind {
        Kind::Application => typed(doc.text).map(Resource::Application),
        Kind::Machine => typed(doc.text).map(Resource::Machine),
        Kind::Container => typed(doc.text).map(Resource::Container),
    };
    let resource = match resource {
        Ok(r) => r,
        Err(b) => {
            let (e, path) = *b;
            return out.errors.push(from_yaml(e, Some(path)));
        }
    };

    if let Resource::Application(a) = &resource
        && let Some(p) = &a.spec.lxd_profile
    {
        for key in &p.ignored_keys {
            let (l, c) = at(&["spec".into(), "lxdProfile".into(), key.clone()]);
            out.warnings.push(problem(
                l,
                c,
                format!("spec.lxdProfile.{key}: ignored (LXD takes the profile's name from the application)"),
            ));
        }
    }
    let mut invalid = false;
    for v in validate::check(&resource) {
        let (l, c) = at(&v.path);
        let p = problem(l, c, format!("{}: {}", v.dotted_path(), v.message));
        match v.severity {
            Severity::Invalid => {
                invalid = true;
                out.errors.push(p);
            }
            Severity::ProfileRule => out.rule_violations.push(p),
        }
    }
    if !invalid {
        out.resources.push(Located {
            resource,
            file: file.to_string(),
            line: root_line + doc.first_line,
        });
    }
}

/// Why a document that is not even a resource's header fails: its YAML, else its shape
/// (not a mapping), else the header's own error.
fn shape_problem(
    text: &str,
    header_error: serde_saphyr::Error,
    problem: &dyn Fn(u64, u64, String) -> Problem,
    from_yaml: &dyn Fn(serde_saphyr::Error, Option<String>) -> Problem,
) -> Problem {
    match serde_saphyr::from_str_with_options::<Spanned<Node>>(text, options()) {
        Err(e) => from_yaml(e, None),
        Ok(tree) if !matches!(tree.value, Node::Map(_)) => problem(
            tree.referenced.line(),
            tree.referenced.column(),
            "expected a resource (a mapping with apiVersion, kind, metadata, spec)".into(),
        ),
        Ok(_) => from_yaml(header_error, None),
    }
}

/// Parses a document as `Object<S>`, and on failure says which field was being read.
fn typed<S>(text: &str) -> Result<Object<S>, Box<(serde_saphyr::Error, String)>>
where
    S: for<'de> Deserialize<'de>,
{
    let mut track = serde_path_to_error::Track::new();
    let r = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        Object::<S>::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    r.map_err(|e| Box::new((e, track.path().to_string())))
}

/// serde-saphyr's message without its `error: line L column C: ` prefix (the position is
/// ours to print).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    // Where the library's own words are advice to its API's users, or its Debug output,
    // say it to a user instead.
    match innermost(e) {
        serde_saphyr::Error::DuplicateMappingKey { key, .. } => {
            return match key {
                Some(k) => format!("the key {k:?} appears twice in this mapping"),
                None => "a key appears twice in this mapping".into(),
            };
        }
        serde_saphyr::Error::Budget { breach, .. } => {
            use serde_saphyr::budget::BudgetBreach as B;
            return match breach {
                B::Depth { .. } => format!("nested deeper than {MAX_DEPTH} levels: refused"),
                B::ScalarBytes { .. } => format!(
                    "more than {MAX_FILE_BYTES} bytes of text once aliases are expanded: refused"
                ),
                B::Aliases { .. } | B::Anchors { .. } => {
                    "more aliases or anchors than a resource file needs: refused".into()
                }
                _ => "larger than a resource file can be (YAML nodes or events): refused".into(),
            };
        }
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayCounterOverflow { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => {
            return "aliases expand to more than a resource file can hold (an alias bomb?): refused"
                .into();
        }
        _ => {}
    }
    unpositioned(e)
}

/// The error inside serde-saphyr's alias and snippet wrappers.
pub(crate) fn innermost(e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    let mut inner = e;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    inner
}

/// serde-saphyr's own message, its first line, without the position it carries in front
/// (`error: line L column C: `) or, for custom messages, at the end.
pub(crate) fn unpositioned(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = match text.strip_prefix("line ") {
        Some(rest) => match rest.split_once(": ") {
            Some((pos, msg)) if pos.contains(" column ") => msg,
            _ => text,
        },
        None => text,
    };
    let text = text.lines().next().unwrap_or(text).trim();
    match text.rsplit_once(" at line ") {
        Some((msg, pos)) if pos.contains(", column ") => msg.to_string(),
        _ => text.to_string(),
    }
}

/// A document's shape: mappings and sequences with the position of every entry.
enum Node {
    /// Key, the key's position, the value.
    Map(Vec<(String, Location, Node)>),
    Seq(Vec<(Location, Node)>),
    Scalar,
}

impl Node {
    /// The position of the deepest entry on `path` that exists: the key of a mapping
    /// entry, or the item of a sequence.
    fn locate(&self, path: &[String]) -> Option<Location> {
        let (first, rest) = path.split_first()?;
        let (loc, child) = match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _, _)| k == first)
                .map(|(_, kl, n)| (*kl, n))?,
            Node::Seq(items) => {
                let i: usize = first.parse().ok()?;
                items.get(i).map(|(l, n)| (*l, n))?
            }
            Node::Scalar => return None,
        };
        Some(child.locate(rest).unwrap_or(loc))
    }
}

/// A mapping key, as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_string(V)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("YAML")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = map.next_key::<Spanned<Key>>()? {
                    let v: Node = map.next_value()?;
                    entries.push((k.value.0, k.referenced, v));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element::<Spanned<Node>>()? {
                    items.push((v.referenced, v.value));
                }
                Ok(Node::Seq(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
        }
        d.deserialize_any(V)
    }
}

/// Several files' resources, checked as a set: the same kind, namespace and name twice
/// is a problem that names both places.
pub fn duplicates(resources: &[Located]) -> Vec<Problem> {
    let mut seen: std::collections::HashMap<_, &Located> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for r in resources {
        let key = r.resource.key();
        if let Some(first) = seen.get(&key) {
            out.push(Problem {
                file: r.file.clone(),
                line: r.line,
                column: 1,
                message: format!(
                    "{} {:?} in namespace {:?} is defined twice: here and at {}:{}",
                    key.kind, key.name, key.namespace, first.file, first.line
                ),
            });
        } else {
            seen.insert(key, r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: one}\nspec:\n  revision: 3\n";

    fn errors(text: &str) -> Vec<String> {
        parse_str("f.yaml", text)
            .errors
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn parsing_again_reuses_unchanged_documents_and_equals_a_fresh_parse() {
        let summary = |p: &ParsedFile| {
            let resources: Vec<(String, String, u64)> = (p.resources.iter())
                .map(|r| {
                    let name = r.resource.metadata().name.clone();
                    (name, format!("{:?}", r.resource), r.line)
                })
                .collect();
            let problems = |v: &[Problem]| v.iter().map(Problem::to_string).collect::<Vec<_>>();
            (
                resources,
                problems(&p.errors),
                problems(&p.rule_violations),
                problems(&p.warnings),
            )
        };
        let two = APP.replace("one", "two");
        let edits = [
            format!(
                "{APP}---
{two}"
            ),
            // One document edited in place.
            format!(
                "{APP}---
{}",
                two.replace("revision: 3", "revision: 4")
            ),
            // A line inserted above: every later document moves, its positions with it.
            format!(
                "# new
{APP}---
{}",
                two.replace("revision: 3", "revision: 4")
            ),
            // A broken document, then mended.
            format!(
                "# new
{APP}---
{}",
                two.replace("revision: 3", "revision: x")
            ),
            format!(
                "# new
{APP}---
{two}---
"
            ),
            String::new(),
            format!(
                "{APP}---
{two}"
            ),
        ];
        let mut last = Documents::default();
        for text in &edits {
            let again = parse_bytes_again("f.yaml", text.clone().into_bytes(), &mut last);
            assert_eq!(
                summary(&again),
                summary(&parse_str("f.yaml", text)),
                "{text}"
            );
        }
        assert_eq!(last.0.len(), 2, "only this text's documents are kept");
        let not_utf8 = parse_bytes_again("f.yaml", vec![0xff], &mut last);
        assert_eq!(not_utf8.errors.len(), 1);
        assert!(last.0.is_empty());
    }

    #[test]
    fn several_documents_in_one_file_each_keep_their_own_lines() {
        let text = format!("# comment\n{APP}---\n{}---\n", APP.replace("one", "two"));
        let p = parse_str("f.yaml", &text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let got: Vec<(String, u64)> = p
            .resources
            .iter()
            .map(|r| (r.resource.metadata().name.clone(), r.line))
            .collect();
        assert_eq!(got, vec![("one".into(), 2), ("two".into(), 8)]);
        let bad = format!(
            "{APP}---\n{}",
            APP.replace("revision: 3", "revision: seven")
        );
        assert_eq!(
            errors(&bad),
            vec!["f.yaml:11:13: spec.revision: revision must be an integer >= 0, not \"seven\""]
        );
    }

    #[test]
    fn namespace_defaults_to_default() {
        let p = parse_str("f.yaml", APP);
        assert_eq!(p.resources[0].resource.metadata().namespace, "default");
    }

    #[test]
    fn unknown_spec_field_names_its_path_and_position() {
        let text = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {name: '0'}\nspec:\n  applicatons: [a]\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "f.yaml:5:3: spec.applicatons: unknown field `applicatons`, expected one of"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = errors("apiVersion: lxdmutater.dev/v1alpha1\nkind: [\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("f.yaml:"), "{e:?}");
        assert!(!e[0].starts_with("f.yaml: "), "no line in {e:?}");
    }

    #[test]
    fn unknown_kind_and_api_version_and_missing_name_are_errors() {
        let e = errors(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machin\nmetadata: {name: a}\nspec: {}\n",
        );
        assert_eq!(
            e,
            vec![
                "f.yaml:2:1: kind: unknown kind \"Machin\" (expected one of Application, Machine, Container)"
            ]
        );
        let e = errors("apiVersion: v1\nkind: Machine\nmetadata: {name: a}\nspec: {}\n");
        assert_eq!(
            e,
            vec![
                "f.yaml:1:1: apiVersion: \"v1\" is not served here (expected lxdmutater.dev/v1alpha1)"
            ]
        );
        let e = errors(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {namespace: a}\nspec: {}\n",
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("metadata: missing field `name`"), "{e:?}");
    }

    #[test]
    fn a_negative_revision_is_refused() {
        let e = errors(&APP.replace("revision: 3", "revision: -1"));
        assert_eq!(
            e,
            vec!["f.yaml:5:13: spec.revision: revision must be an integer >= 0, not -1"]
        );
    }

    #[test]
    fn bad_names_point_at_their_field() {
        let text = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {name: '0'}\nspec:\n  instance: bad_name\n  extraProfiles: [ok, 'a/b']\n";
        let e = errors(text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("f.yaml:6:23: spec.extraProfiles[1]: "),
            "{e:?}"
        );
        assert!(e[1].starts_with("f.yaml:5:3: spec.instance: "), "{e:?}");
    }

    #[test]
    fn containers_need_a_host_machine() {
        let text = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Container\nmetadata: {name: c}\nspec: {instance: c}\n";
        assert!(errors(text)[0].contains("spec.machine: a Container needs spec.machine"));
    }

    #[test]
    fn profile_rules_are_reported_in_jujus_words_unless_forced() {
        let text = format!(
            "{APP}  lxdProfile:\n    config: {{boot.autostart: true}}\n    devices:\n      d: {{type: disk}}\n"
        );
        let p = parse_str("f.yaml", &text);
        assert!(p.errors.is_empty());
        assert_eq!(
            p.resources.len(),
            1,
            "a rule violation does not unload the resource"
        );
        let v: Vec<String> = p.rule_violations.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            v,
            vec![
                "f.yaml:7:14: spec.lxdProfile.config.boot.autostart: invalid lxd-profile: contains config value \"boot.autostart\"",
                "f.yaml:9:11: spec.lxdProfile.devices.d.type: invalid lxd-profile: contains device type \"disk\"",
            ]
        );
        let forced = text.replace("  lxdProfile:", "  force: true\n  lxdProfile:");
        assert!(parse_str("f.yaml", &forced).rule_violations.is_empty());
    }

    #[test]
    fn the_owner_key_may_not_be_set_in_a_profile_even_forced() {
        let text = format!(
            "{APP}  force: true\n  lxdProfile:\n    config: {{user.lxd-mutater.owner: me, security.nesting: true}}\n"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("spec.lxdProfile.config.user.lxd-mutater.owner: config key \"user.lxd-mutater.owner\" is reserved"),
            "{e:?}"
        );
    }

    #[test]
    fn a_duplicate_key_is_said_in_the_products_words() {
        let e = errors("apiVersion: lxdmutater.dev/v1alpha1\napiVersion: x\nkind: Machine\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].ends_with("the key \"apiVersion\" appears twice in this mapping"),
            "{e:?}"
        );
    }

    #[test]
    fn a_file_over_the_size_cap_is_refused_before_parsing() {
        let big = format!("{APP}# {}\n", "x".repeat(10 * 1024 * 1024));
        let e = errors(&big);
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("larger than"), "{e:?}");
    }

    #[test]
    fn a_billion_laughs_alias_bomb_is_refused() {
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            bomb.push_str(&format!("{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let text = format!("{APP}  lxdProfile:\n    config:\n      x: 1\n    description: *i\n")
            .replace(APP, &format!("{bomb}{APP}"));
        let started = std::time::Instant::now();
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn ten_thousand_levels_of_nesting_are_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = errors(&format!("{APP}  x: {deep}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("f.yaml:"), "{e:?}");
        let deep_block: String = (0..10_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert_eq!(errors(&deep_block).len(), 1);
    }

    #[test]
    fn the_same_resource_twice_names_both_files() {
        let a = parse_str("a.yaml", APP).resources;
        let b = parse_str("b.yaml", APP).resources;
        let all: Vec<Located> = a.into_iter().chain(b).collect();
        let d: Vec<String> = duplicates(&all).iter().map(|p| p.to_string()).collect();
        assert_eq!(
            d,
            vec![
                "b.yaml:1:1: Application \"one\" in namespace \"default\" is defined twice: here and at a.yaml:1"
            ]
        );
    }

    #[test]
    fn document_markers_split_only_at_line_start() {
        let docs = split_documents("a: |\n  ---\n  x\n---\nb: 1\n...\n--- {c: 2}\n");
        let texts: Vec<&str> = docs.iter().map(|d| d.text).collect();
        assert_eq!(texts, vec!["a: |\n  ---\n  x\n", "b: 1\n", "", " {c: 2}\n"]);
        assert_eq!(docs[1].first_line, 4);
        assert_eq!(docs[3].first_line, 6);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_str("f.yaml", &text);
        }

        #[test]
        fn yaml_like_text_never_panics(text in "([a-z:\\-\\[\\]{}&*!|>'\" #\\n]|  |apiVersion: lxdmutater.dev/v1alpha1\\n|kind: Machine\\n|spec:\\n){0,60}") {
            let _ = parse_str("f.yaml", &text);
        }
    }
}
