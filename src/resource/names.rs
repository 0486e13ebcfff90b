//! Names: what LXD accepts as instance and profile names, and the templates that turn a
//! model, an application and a revision into profile names (Juju's `core/lxdprofile`).

use std::fmt;

/// LXD 5.0.2 accepts very long profile names; we stop at a length that still fits a
/// file name, so that a name a user mistyped into a wall of text is caught here.
pub const MAX_PROFILE_NAME: usize = 255;
/// LXD instance names are host names: 1 to 63 characters.
pub const MAX_INSTANCE_NAME: usize = 63;

/// LXD's rules for a profile name (`POST /1.0/profiles`): not empty, no `/`, not `.` or
/// `..`; plus our length limit and no control characters.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("profile name must not be empty".into());
    }
    if name.contains('/') {
        return Err(format!("profile name {name:?} must not contain '/'"));
    }
    if name == "." || name == ".." {
        return Err(format!("profile name {name:?} is not allowed"));
    }
    if name.len() > MAX_PROFILE_NAME {
        return Err(format!(
            "profile name is {} bytes long, more than {MAX_PROFILE_NAME}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "profile name {name:?} must not contain control characters"
        ));
    }
    Ok(())
}

/// LXD's rules for an instance name (a host name): 1 to 63 ASCII letters, digits and
/// hyphens, not starting with a digit or a hyphen, not ending with a hyphen.
pub fn check_instance_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INSTANCE_NAME {
        return Err(format!(
            "instance name {name:?} must be 1-{MAX_INSTANCE_NAME} characters long"
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!(
            "instance name {name:?} can only contain letters, digits and hyphens"
        ));
    }
    let first = name.as_bytes()[0];
    if first.is_ascii_digit() || first == b'-' {
        return Err(format!(
            "instance name {name:?} must not start with a digit or a hyphen"
        ));
    }
    if name.ends_with('-') {
        return Err(format!("instance name {name:?} must not end with a hyphen"));
    }
    Ok(())
}

/// A resource name (metadata.name or namespace): it names files in the state directory
/// and parts of profile names, so it follows the profile-name rules.
pub fn check_resource_name(what: &str, name: &str) -> Result<(), String> {
    check_profile_name(name).map_err(|e| e.replacen("profile name", what, 1))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Model,
    App,
    Rev,
}

/// A profile name template with the placeholders `{model}`, `{app}` and `{rev}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl fmt::Display for NameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl NameTemplate {
    /// Parses a template; `required` are the placeholders it must contain, once each.
    fn parse(source: &str, required: &[&str]) -> Result<NameTemplate, String> {
        let mut segments = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("template {source:?}: unclosed '{{'"))?;
            let placeholder = &rest[open + 1..open + close];
            segments.push(match placeholder {
                "model" => Segment::Model,
                "app" => Segment::App,
                "rev" => Segment::Rev,
                other => {
                    return Err(format!(
                        "template {source:?}: unknown placeholder {{{other}}} (use {{model}}, {{app}}, {{rev}})"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
        }
        for window in segments.windows(2) {
            if !matches!(window[0], Segment::Literal(_))
                && !matches!(window[1], Segment::Literal(_))
            {
                return Err(format!(
                    "template {source:?}: placeholders must be separated by text"
                ));
            }
        }
        for want in ["model", "app", "rev"] {
            let n = segments
                .iter()
                .filter(|s| {
                    matches!(
                        (s, want),
                        (Segment::Model, "model") | (Segment::App, "app") | (Segment::Rev, "rev")
                    )
                })
                .count();
            if required.contains(&want) && n != 1 {
                return Err(format!("template {source:?} must contain {{{want}}} once"));
            }
            if !required.contains(&want) && n != 0 {
                return Err(format!("template {source:?} must not contain {{{want}}}"));
            }
        }
        Ok(NameTemplate {
            source: source.to_string(),
            segments,
        })
    }

    /// One allocation, sized up front (a string grown piece by piece was reallocated
    /// three times per name).
    fn render(&self, model: &str, app: &str, rev: u64) -> String {
        use std::fmt::Write as _;
        const MAX_DIGITS: usize = 20;
        let len: usize = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.len(),
                Segment::Model => model.len(),
                Segment::App => app.len(),
                Segment::Rev => MAX_DIGITS,
            })
            .sum();
        let mut out = String::with_capacity(len);
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Model => out.push_str(model),
                Segment::App => out.push_str(app),
                // Writing to a String cannot fail.
                Segment::Rev => {
                    let _ = write!(out, "{rev}");
                }
            }
        }
        out
    }

    /// Matches `name` against the template. Known values (`Some`) must match exactly;
    /// unknown ones match any non-empty text; `{rev}` matches digits. Returns the model,
    /// application and revision it matched.
    fn matches(
        &self,
        name: &str,
        model: Option<&str>,
        app: Option<&str>,
    ) -> Option<(String, String, u64)> {
        let mut found = (String::new(), String::new(), 0u64);
        if match_from(&self.segments, name, model, app, &mut found) {
            Some(found)
        } else {
            None
        }
    }
}

/// Backtracking match of `segments` against all of `text`; templates have at most three
/// placeholders and names are short, so this stays cheap.
fn match_from(
    segments: &[Segment],
    text: &str,
    model: Option<&str>,
    app: Option<&str>,
    found: &mut (String, String, u64),
) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return text.is_empty();
    };
    let fixed = match first {
        Segment::Literal(l) => Some(l.as_str()),
        Segment::Model => model,
        Segment::App => app,
        Segment::Rev => None,
    };
    if let Some(f) = fixed {
        if !text.starts_with(f) {
            return false;
        }
        if !match_from(rest, &text[f.len()..], model, app, found) {
            return false;
        }
        match first {
            Segment::Model => found.0 = f.to_string(),
            Segment::App => found.1 = f.to_string(),
            _ => {}
        }
        return true;
    }
    // A wildcard: try every non-empty prefix, shortest first (char boundaries only).
    for (end, _) in text.char_indices().skip(1).chain([(text.len(), ' ')]) {
        let head = &text[..end];
        if matches!(first, Segment::Rev) && !head.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        if match_from(rest, &text[end..], model, app, found) {
            match first {
                Segment::Model => found.0 = head.to_string(),
                Segment::App => found.1 = head.to_string(),
                Segment::Rev => match head.parse() {
                    Ok(r) => found.2 = r,
                    Err(_) => return false,
                },
                Segment::Literal(_) => {}
            }
            return true;
        }
    }
    false
}

/// Default charm profile template (Juju's `juju-{model}-{app}-{rev}`).
pub const DEFAULT_CHARM_TEMPLATE: &str = "juju-{model}-{app}-{rev}";
/// Default model profile template (Juju's `juju-{model}`).
pub const DEFAULT_MODEL_TEMPLATE: &str = "juju-{model}";

/// How profile names are made (both templates configurable: Juju 3.6 added a short
/// model id to them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileNames {
    charm: NameTemplate,
    model: NameTemplate,
}

impl Default for ProfileNames {
    fn default() -> Self {
        ProfileNames {
            charm: NameTemplate {
                source: DEFAULT_CHARM_TEMPLATE.into(),
                segments: vec![
                    Segment::Literal("juju-".into()),
                    Segment::Model,
                    Segment::Literal("-".into()),
                    Segment::App,
                    Segment::Literal("-".into()),
                    Segment::Rev,
                ],
            },
            model: NameTemplate {
                source: DEFAULT_MODEL_TEMPLATE.into(),
                segments: vec![Segment::Literal("juju-".into()), Segment::Model],
            },
        }
    }
}

impl ProfileNames {
    /// The charm template needs `{model}`, `{app}` and `{rev}`, the model template
    /// `{model}` only.
    pub fn new(charm: &str, model: &str) -> Result<ProfileNames, String> {
        Ok(ProfileNames {
            charm: NameTemplate::parse(charm, &["model", "app", "rev"])?,
            model: NameTemplate::parse(model, &["model"])?,
        })
    }

    /// `juju-{model}-{app}-{rev}`.
    pub fn charm_profile(&self, model: &str, app: &str, rev: u64) -> String {
        self.charm.render(model, app, rev)
    }

    /// The charm template as given (`juju-{model}-{app}-{rev}` by default).
    pub fn charm_template(&self) -> &str {
        &self.charm.source
    }

    /// `juju-{model}`.
    pub fn model_profile(&self, model: &str) -> String {
        self.model.render(model, "", 0)
    }

    /// Whether `name` has the shape of a charm profile name (Juju's `IsValidName`).
    pub fn is_charm_profile(&self, name: &str) -> bool {
        self.charm.matches(name, None, None).is_some()
    }

    /// The revision in a charm profile name (Juju's `ProfileRevision`).
    pub fn revision(&self, name: &str) -> Option<u64> {
        self.charm.matches(name, None, None).map(|(_, _, r)| r)
    }

    /// The same name with another revision (Juju's `ProfileReplaceRevision`).
    pub fn replace_revision(&self, name: &str, rev: u64) -> Option<String> {
        self.charm
            .matches(name, None, None)
            .map(|(m, a, _)| self.charm.render(&m, &a, rev))
    }

    /// Whether `name` is a charm profile of `app` in any model (Juju's
    /// `MatchProfileNameByAppName`): `juju-foo-nonebar-2` is not one of `bar`.
    pub fn is_profile_of(&self, name: &str, app: &str) -> bool {
        self.charm.matches(name, None, Some(app)).is_some()
    }

    /// The application and revision of a charm profile of `model`.
    pub fn parse_charm_profile(&self, name: &str, model: &str) -> Option<(String, u64)> {
        self.charm
            .matches(name, Some(model), None)
            .map(|(_, a, r)| (a, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The cases of Juju's core/lxdprofile name tests.
    #[test]
    fn charm_profile_name_is_juju_model_app_revision() {
        let n = ProfileNames::default();
        assert_eq!(n.charm_profile("foo", "bar", 1), "juju-foo-bar-1");
        assert_eq!(n.model_profile("foo"), "juju-foo");
        for rev in [0, 9, 10, 99, 100, 1_000_007, u64::MAX] {
            assert_eq!(n.charm_profile("m", "a", rev), format!("juju-m-a-{rev}"));
        }
    }

    #[test]
    fn only_charm_profile_names_are_recognised() {
        let n = ProfileNames::default();
        assert!(n.is_charm_profile("juju-foo-bar-1"));
        assert!(!n.is_charm_profile("default"));
        assert!(!n.is_charm_profile("juju-model"));
        assert!(!n.is_charm_profile("juju-foo-bar-x"));
        assert!(!n.is_charm_profile("juju-foo-bar-"));
    }

    #[test]
    fn revision_is_read_from_the_name() {
        let n = ProfileNames::default();
        assert_eq!(n.revision("juju-foo-bar-1"), Some(1));
        assert_eq!(n.revision("juju-foo-bar-123"), Some(123));
        assert_eq!(n.revision("default"), None);
    }

    #[test]
    fn revision_is_replaced() {
        let n = ProfileNames::default();
        assert_eq!(
            n.replace_revision("juju-foo-bar-1", 3).as_deref(),
            Some("juju-foo-bar-3")
        );
        assert_eq!(n.replace_revision("juju-model", 3), None);
    }

    #[test]
    fn matching_by_application_needs_the_whole_application_name() {
        let n = ProfileNames::default();
        assert!(n.is_profile_of("juju-foo-bar-2", "bar"));
        assert!(!n.is_profile_of("juju-foo-nonebar-2", "bar"));
        assert!(!n.is_profile_of("default", "bar"));
        assert!(!n.is_profile_of("juju-foo", "bar"));
        assert!(n.is_profile_of("juju-foo-x-bar-2", "x-bar"));
    }

    #[test]
    fn odd_but_legal_application_names_round_trip() {
        let n = ProfileNames::default();
        let app = "b312--?123!!bb-x__xx-012-y123yy";
        let name = n.charm_profile("default", app, 100);
        assert_eq!(name, "juju-default-b312--?123!!bb-x__xx-012-y123yy-100");
        assert!(n.is_charm_profile(&name));
        assert_eq!(n.revision(&name), Some(100));
        assert!(n.is_profile_of(&name, app));
        assert_eq!(
            n.parse_charm_profile(&name, "default"),
            Some((app.to_string(), 100))
        );
        assert_eq!(check_profile_name(&name), Ok(()));
    }

    #[test]
    fn templates_are_configurable_and_checked() {
        let n =
            ProfileNames::new("juju-{model}-1a2b3c-{app}-{rev}", "juju-{model}-1a2b3c").unwrap();
        assert_eq!(n.charm_profile("m", "a", 2), "juju-m-1a2b3c-a-2");
        assert_eq!(n.model_profile("m"), "juju-m-1a2b3c");
        assert_eq!(
            n.parse_charm_profile("juju-m-1a2b3c-a-2", "m"),
            Some(("a".into(), 2))
        );
        assert!(ProfileNames::new("juju-{app}-{rev}", "juju-{model}").is_err());
        assert!(ProfileNames::new("juju-{model}-{app}{rev}", "juju-{model}").is_err());
        assert!(ProfileNames::new("juju-{model}-{app}-{rev}", "juju-{app}").is_err());
        assert!(ProfileNames::new("juju-{model}-{x}-{rev}", "juju-{model}").is_err());
    }

    #[test]
    fn lxd_name_rules() {
        assert!(check_profile_name("").is_err());
        assert!(check_profile_name("a/b").is_err());
        assert!(check_profile_name("..").is_err());
        assert!(check_profile_name(&"a".repeat(256)).is_err());
        assert!(check_profile_name("a b?!").is_ok());
        assert!(check_instance_name("juju-3f1c2a-0-lxd-1").is_ok());
        assert!(check_instance_name(&"a".repeat(64)).is_err());
        assert!(check_instance_name("x_y").is_err());
        assert!(check_instance_name("0abc").is_err());
        assert!(check_instance_name("abc-").is_err());
        assert!(check_instance_name("").is_err());
    }
}
