//! Which objects a list or watch returns: its namespace, `labelSelector` (equality,
//! inequality and existence) and `fieldSelector` (`metadata.name`, `metadata.namespace`,
//! and the resource's selectable fields, such as a Container's `spec.machine`).

use serde_json::Value;

use crate::status::Status;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed namespace plus label and field selectors.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Filter {
    pub(crate) fn new(
        namespace: Option<String>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
        selectable: &[&str],
    ) -> Result<Self, Status> {
        let fields = parse(field_selector.unwrap_or_default(), false)?;
        if let Some(unknown) = fields.iter().map(field_of).find(|f| {
            !matches!(*f, "metadata.name" | "metadata.namespace") && !selectable.contains(f)
        }) {
            return Err(Status::bad_request(format!(
                "field label not supported: {unknown}"
            )));
        }
        Ok(Self {
            namespace,
            labels: parse(label_selector.unwrap_or_default(), true)?,
            fields,
        })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str().unwrap_or_default() != ns
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let field = |k: &str| match k {
            "metadata.name" => meta["name"].as_str(),
            "metadata.namespace" => Some(meta["namespace"].as_str().unwrap_or_default()),
            path => path
                .split('.')
                .try_fold(object, |v, part| v.get(part))
                .and_then(Value::as_str),
        };
        self.labels.iter().all(|r| holds(r, label)) && self.fields.iter().all(|r| holds(r, field))
    }
}

fn field_of(r: &Requirement) -> &str {
    match r {
        Requirement::Equals(k, _)
        | Requirement::NotEquals(k, _)
        | Requirement::Exists(k)
        | Requirement::Absent(k) => k,
    }
}

fn holds<'a>(r: &Requirement, get: impl Fn(&str) -> Option<&'a str>) -> bool {
    match r {
        Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::Absent(k) => get(k).is_none(),
    }
}

fn parse(selector: &str, allow_existence: bool) -> Result<Vec<Requirement>, Status> {
    let unsupported = || Status::bad_request(format!("unable to parse requirement: {selector:?}"));
    let mut out = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let requirement = if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if !allow_existence || term.contains([' ', '(']) {
            // Set-based requirements (`in`, `notin`) are not served.
            return Err(unsupported());
        } else if let Some(k) = term.strip_prefix('!') {
            Requirement::Absent(k.into())
        } else {
            Requirement::Exists(term.into())
        };
        out.push(requirement);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_and_field_selectors_combine() {
        let object =
            json!({"metadata": {"name": "a", "namespace": "demo", "labels": {"app": "x"}}});
        let filter =
            |labels, fields| Filter::new(None, labels, fields, &[]).map(|f| f.matches(&object));
        assert_eq!(filter(Some("app=x"), Some("metadata.name=a")), Ok(true));
        assert_eq!(filter(Some("app!=x"), None), Ok(false));
        assert_eq!(
            filter(Some("app,!other"), Some("metadata.namespace==demo")),
            Ok(true)
        );
        assert_eq!(filter(None, Some("metadata.name!=a")), Ok(false));
        assert!(filter(Some("app in (x)"), None).is_err());
        assert!(filter(None, Some("spec.x=1")).is_err());
    }

    #[test]
    fn a_selectable_field_selects_by_its_value_and_others_are_refused() {
        let object = json!({"metadata": {"name": "a"}, "spec": {"machine": "0"}});
        let filter = |fields| {
            Filter::new(None, None, Some(fields), &["spec.machine"]).map(|f| f.matches(&object))
        };
        assert_eq!(filter("spec.machine=0"), Ok(true));
        assert_eq!(filter("spec.machine=1"), Ok(false));
        assert!(filter("spec.instance=x").is_err());
        assert!(Filter::new(None, None, Some("spec.machine=0"), &[]).is_err());
    }

    #[test]
    fn namespace_limits_matches() {
        let object = json!({"metadata": {"name": "a", "namespace": "demo"}});
        let other = Filter::new(Some("other".into()), None, None, &[]).map(|f| f.matches(&object));
        assert_eq!(other, Ok(false));
    }
}
