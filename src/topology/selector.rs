//! Kubernetes label selectors (`matchLabels` and `matchExpressions` with In, NotIn,
//! Exists, DoesNotExist; apimachinery `LabelSelectorAsSelector`) and the
//! `{ namespace_selector, pod_selector }` pairs Antrea's Egress `appliedTo` and
//! NetworkPolicy peers are written with. Resolved once, with located errors; matched
//! against pods and namespaces when a cluster is built.

use super::config::Text;
use super::model::{Namespace, Pod};
use super::resolve::{Resolver, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// `{ match_labels = {..}, match_expressions = [ { key, operator, values } ] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorConfig {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Spanned<ExpressionConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpressionConfig {
    pub key: String,
    pub operator: Text,
    #[serde(default)]
    pub values: Vec<String>,
}

/// `{ namespace_selector = {..}, pod_selector = {..} }`: both given means both must
/// hold (one peer, AND).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodPeerConfig {
    #[serde(default)]
    pub namespace_selector: Option<LabelSelectorConfig>,
    #[serde(default)]
    pub pod_selector: Option<LabelSelectorConfig>,
}

/// A selector's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Expression {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A resolved label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<Expression>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.expressions.iter().all(|e| e.matches(labels))
    }
}

/// A resolved `{ namespace_selector, pod_selector }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPeer {
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: Option<LabelSelector>,
}

impl PodPeer {
    /// Whether the peer selects `pod` (in `namespaces`). A cluster-scoped peer (Antrea
    /// Egress, ClusterNetworkPolicy) with only a pod selector selects in every
    /// namespace; with neither, nothing.
    pub fn selects(&self, pod: &Pod, namespaces: &[Namespace]) -> bool {
        if self.namespace_selector.is_none() && self.pod_selector.is_none() {
            return false;
        }
        let namespace_ok = self.namespace_selector.as_ref().is_none_or(|selector| {
            namespaces
                .iter()
                .find(|n| n.name == pod.namespace)
                .is_some_and(|n| selector.matches(&n.labels))
        });
        namespace_ok
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|selector| selector.matches(&pod.labels))
    }
}

/// The pods of each namespace, by namespace name, in pod order: selecting walks only
/// the namespaces a policy or Service can pick, not every pod of the cluster for
/// every selector (150 × 110 pods by 1,000 policies was seconds of string
/// comparisons).
pub struct PodsByNamespace<'a> {
    pods: BTreeMap<&'a str, Vec<usize>>,
}

impl<'a> PodsByNamespace<'a> {
    pub fn new(pods: &'a [Pod]) -> PodsByNamespace<'a> {
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, pod) in pods.iter().enumerate() {
            by_namespace
                .entry(pod.namespace.as_str())
                .or_default()
                .push(index);
        }
        PodsByNamespace { pods: by_namespace }
    }

    /// The pods of namespace `name`, in pod order.
    pub fn in_namespace(&self, name: &str) -> &[usize] {
        self.pods.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The pods of the (declared) namespaces whose labels `selector` matches, in pod
    /// order.
    pub fn in_selected_namespaces(
        &self,
        selector: &LabelSelector,
        namespaces: &[Namespace],
    ) -> Vec<usize> {
        let mut pods: Vec<usize> = namespaces
            .iter()
            .filter(|namespace| selector.matches(&namespace.labels))
            .flat_map(|namespace| self.in_namespace(&namespace.name).iter().copied())
            .collect();
        pods.sort_unstable();
        pods
    }
}

/// Resolves a selector: every operator known, In/NotIn with values, Exists and
/// DoesNotExist without (apimachinery's validation).
pub fn resolve_selector(
    resolver: &Resolver,
    config: &LabelSelectorConfig,
) -> Result<LabelSelector> {
    let mut expressions = Vec::new();
    for spanned in &config.match_expressions {
        let expression = spanned.get_ref();
        let operator = match expression.operator.get_ref().as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(resolver.error(
                    &expression.operator,
                    format!(
                        "unknown selector operator `{other}` (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                ))
            }
        };
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values && expression.values.is_empty() {
            return Err(resolver.error(
                spanned,
                format!(
                    "operator {} needs `values` (one or more)",
                    expression.operator.get_ref()
                ),
            ));
        }
        if !needs_values && !expression.values.is_empty() {
            return Err(resolver.error(
                spanned,
                format!(
                    "operator {} takes no `values`",
                    expression.operator.get_ref()
                ),
            ));
        }
        expressions.push(Expression {
            key: expression.key.clone(),
            operator,
            values: expression.values.clone(),
        });
    }
    Ok(LabelSelector {
        match_labels: config.match_labels.clone(),
        expressions,
    })
}

pub fn resolve_peer(resolver: &Resolver, config: &PodPeerConfig) -> Result<PodPeer> {
    Ok(PodPeer {
        namespace_selector: config
            .namespace_selector
            .as_ref()
            .map(|s| resolve_selector(resolver, s))
            .transpose()?,
        pod_selector: config
            .pod_selector
            .as_ref()
            .map(|s| resolve_selector(resolver, s))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expressions_follow_apimachinery() {
        let expression = |operator, values: &[&str]| Expression {
            key: "tier".into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let web = labels(&[("tier", "web")]);
        let none = labels(&[]);
        assert!(expression(Operator::In, &["web", "api"]).matches(&web));
        assert!(!expression(Operator::In, &["api"]).matches(&web));
        assert!(!expression(Operator::In, &["web"]).matches(&none));
        // NotIn matches a pod without the key at all.
        assert!(expression(Operator::NotIn, &["api"]).matches(&none));
        assert!(!expression(Operator::NotIn, &["web"]).matches(&web));
        assert!(expression(Operator::Exists, &[]).matches(&web));
        assert!(expression(Operator::DoesNotExist, &[]).matches(&none));
        let selector = LabelSelector {
            match_labels: labels(&[("app", "shop")]),
            expressions: vec![expression(Operator::In, &["web"])],
        };
        assert!(selector.matches(&labels(&[("app", "shop"), ("tier", "web")])));
        assert!(!selector.matches(&web));
        assert!(LabelSelector::default().matches(&none));
    }
}
