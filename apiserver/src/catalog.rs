//! The catalog: what a server serves at one moment — the resources, their index by
//! group, version and plural, and the OpenAPI documents generated from them.
//!
//! A catalog never changes. The server swaps in a new one when resources are installed or
//! removed at run time (a CustomResourceDefinition created or deleted, a custom kind
//! registered from code); requests hold the catalog they started with, so a request never
//! sees half an installation.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;

use crate::openapi;
use crate::resources::ServedResource;

/// The resources served at one moment, with their OpenAPI documents.
pub struct Catalog {
    served: Vec<ServedResource>,
    index: HashMap<(String, String, String), usize>,
    /// The OpenAPI v3 documents (`api/v1`, `apis/<g>/<v>`), and their root.
    openapi: BTreeMap<String, Document>,
    openapi_root: Bytes,
}

/// One OpenAPI document, serialized, with the hash its root entry carries.
#[derive(Clone)]
struct Document {
    json: Bytes,
    hash: String,
}

impl Document {
    fn of(doc: &serde_json::Value) -> Document {
        Document {
            json: Bytes::from(doc.to_string()),
            hash: openapi::content_hash(doc),
        }
    }
}

impl Catalog {
    /// The catalog of `served` (OpenAPI documents generated now).
    pub fn new(served: Vec<ServedResource>) -> Catalog {
        let docs = openapi::v3_documents(&served)
            .into_iter()
            .map(|(k, v)| (k, Document::of(&v)))
            .collect();
        Catalog::assemble(served, docs)
    }

    fn assemble(served: Vec<ServedResource>, openapi: BTreeMap<String, Document>) -> Catalog {
        let index = served
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    (
                        s.rt.group.to_string(),
                        s.rt.version.to_string(),
                        s.rt.plural.to_string(),
                    ),
                    i,
                )
            })
            .collect();
        let paths: serde_json::Map<String, serde_json::Value> = openapi
            .iter()
            .map(|(key, doc)| {
                let url = format!("/openapi/v3/{key}?hash={}", doc.hash);
                (key.clone(), serde_json::json!({ "serverRelativeURL": url }))
            })
            .collect();
        let openapi_root = Bytes::from(serde_json::json!({ "paths": paths }).to_string());
        Catalog {
            served,
            index,
            openapi,
            openapi_root,
        }
    }

    /// The resource served at `group`/`version`/`plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ServedResource> {
        self.index
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .map(|i| &self.served[*i])
    }

    /// The OpenAPI v3 document at `path` (`api/v1`, `apis/apps/v1`).
    pub fn openapi(&self, path: &str) -> Option<&Bytes> {
        self.openapi.get(path).map(|d| &d.json)
    }

    /// The OpenAPI v3 root document (`/openapi/v3`).
    pub fn openapi_root(&self) -> &Bytes {
        &self.openapi_root
    }

    /// This catalog with `resources` added, each replacing any served at its group,
    /// version and plural, and without the resources `remove` matches.
    pub fn with_changes(
        &self,
        resources: Vec<ServedResource>,
        remove: impl Fn(&ServedResource) -> bool,
    ) -> Catalog {
        let key = |s: &ServedResource| {
            (
                s.rt.group.to_string(),
                s.rt.version.to_string(),
                s.rt.plural.to_string(),
            )
        };
        let replaced: std::collections::HashSet<_> = resources.iter().map(key).collect();
        let mut served: Vec<ServedResource> = self
            .served
            .iter()
            .filter(|s| !replaced.contains(&key(s)) && !remove(s))
            .cloned()
            .collect();
        served.extend(resources);
        Catalog::new(served)
    }
}

/// One resource of a catalog, keeping the catalog alive while it is used.
pub struct Entry {
    catalog: Arc<Catalog>,
    index: usize,
}

impl Entry {
    /// The entry for `group`/`version`/`plural` in `catalog`.
    pub fn find(catalog: Arc<Catalog>, group: &str, version: &str, plural: &str) -> Option<Entry> {
        let index =
            *catalog
                .index
                .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))?;
        Some(Entry { catalog, index })
    }
}

impl Deref for Entry {
    type Target = ServedResource;

    fn deref(&self) -> &ServedResource {
        &self.catalog.served[self.index]
    }
}

impl Deref for Catalog {
    type Target = [ServedResource];

    fn deref(&self) -> &[ServedResource] {
        &self.served
    }
}
