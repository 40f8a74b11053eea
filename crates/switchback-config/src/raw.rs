//! The file as written: what serde-saphyr deserializes, with source locations
//! ([`Spanned`]) on every value that validation looks at. Only structure and scalar types are
//! checked here; everything else is checked (collecting all errors) in `validate`.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// A value together with where it is in the file.
pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) listen: Option<S<String>>,
    #[serde(default)]
    pub(crate) admin: Option<S<String>>,
    #[serde(default)]
    pub(crate) workers: Option<S<u64>>,
    #[serde(default)]
    pub(crate) drain_timeout: Option<S<String>>,
    #[serde(default)]
    pub(crate) stream_idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub(crate) upgrade_configs: Vec<S<RawUpgradeConfig>>,
    #[serde(default)]
    pub(crate) ignore_upgrades: Option<Vec<S<String>>>,
    #[serde(default)]
    pub(crate) http_filters: Vec<S<RawFilter>>,
    #[serde(default)]
    pub(crate) runtime: Pairs<u64>,
    #[serde(default)]
    pub(crate) routes: Vec<S<RawRoute>>,
    #[serde(default)]
    pub(crate) clusters: Vec<S<RawCluster>>,
    #[serde(default)]
    pub(crate) access_log: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpgradeConfig {
    pub(crate) upgrade_type: S<String>,
    #[serde(default)]
    pub(crate) enabled: Option<bool>,
    #[serde(default)]
    pub(crate) filters: Option<S<Vec<S<RawFilter>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFilter {
    RequestBodyLimit(S<u64>),
    RequestHeadersToAdd(Pairs<String>),
    ResponseHeadersToAdd(Pairs<String>),
    ConcurrencyLimit(S<u64>),
    Timeout(S<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    #[serde(rename = "match")]
    pub(crate) matcher: S<RawMatch>,
    #[serde(default)]
    pub(crate) cluster: Option<S<String>>,
    #[serde(default)]
    pub(crate) weighted_clusters: Option<S<Vec<S<RawWeightedCluster>>>>,
    #[serde(default)]
    pub(crate) prefix_rewrite: Option<S<String>>,
    #[serde(default)]
    pub(crate) host_rewrite_literal: Option<S<String>>,
    #[serde(default)]
    pub(crate) auto_host_rewrite: Option<S<bool>>,
    #[serde(default)]
    pub(crate) request_headers_to_add: Pairs<String>,
    #[serde(default)]
    pub(crate) request_headers_to_remove: Vec<S<String>>,
    #[serde(default)]
    pub(crate) timeout: Option<S<String>>,
    #[serde(default)]
    pub(crate) idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub(crate) upgrade_configs: Vec<S<RawUpgradeConfig>>,
    #[serde(default)]
    pub(crate) use_websocket: bool,
    #[serde(default)]
    pub(crate) websocket_config: Option<S<RawWebSocketConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub(crate) prefix: Option<S<String>>,
    #[serde(default)]
    pub(crate) path: Option<S<String>>,
    #[serde(default)]
    pub(crate) regex: Option<S<String>>,
    #[serde(default)]
    pub(crate) headers: Vec<S<RawHeaderMatcher>>,
    #[serde(default)]
    pub(crate) runtime_fraction: Option<S<RawRuntimeFraction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatcher {
    pub(crate) name: S<String>,
    #[serde(default)]
    pub(crate) exact: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntimeFraction {
    pub(crate) runtime_key: S<String>,
    pub(crate) default: S<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWeightedCluster {
    pub(crate) name: S<String>,
    pub(crate) weight: S<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebSocketConfig {
    #[serde(default)]
    pub(crate) idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub(crate) max_connect_attempts: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) name: S<String>,
    #[serde(default)]
    pub(crate) connect_timeout: Option<S<String>>,
    #[serde(default)]
    pub(crate) endpoints: Option<S<Vec<S<RawEndpoint>>>>,
}

/// An endpoint: `host:port` or `{ address, hostname }`.
#[derive(Debug)]
pub(crate) enum RawEndpoint {
    Short(String),
    Long(RawEndpointLong),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpointLong {
    pub(crate) address: S<String>,
    #[serde(default)]
    pub(crate) hostname: Option<S<String>>,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;

        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = RawEndpoint;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an endpoint: a string host:port or a mapping {address, hostname}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint::Short(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEndpoint, A::Error> {
                RawEndpointLong::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawEndpoint::Long)
            }
        }

        deserializer.deserialize_any(EndpointVisitor)
    }
}

/// The entries of a YAML mapping in file order, keys and values with their locations.
#[derive(Debug)]
pub(crate) struct Pairs<V>(pub(crate) Vec<(S<String>, S<V>)>);

impl<V> Default for Pairs<V> {
    fn default() -> Self {
        Pairs(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for PairsVisitor<V> {
            type Value = Pairs<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of name: value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<V>, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key()? {
                    let value = map.next_value()?;
                    pairs.push((key, value));
                }
                Ok(Pairs(pairs))
            }
        }

        deserializer.deserialize_map(PairsVisitor(PhantomData))
    }
}
