//! The part of config.toml every member shares, as text that can be edited and composed.
//!
//! A node's config.toml is its own tables (`[node]`, `[cluster]`, `[status]`,
//! `[arti.storage]`) plus the cluster's shared tables (`[[backends]]`, `[timing]`, `[health]`,
//! the rest of `[arti]`). The cluster distributes the shared tables as one versioned text
//! (`cluster::config_sync`); this module makes a new one from an operator's edit
//! ([`edit_backends`]) and puts a received one together with the node's own tables
//! ([`compose`]). Whatever comes out is still checked by [`Config::parse`](super::Config::parse)
//! before it is written or run.

use toml::{Table, Value};

use super::{BackendName, NODE_LOCAL_ARTI_TABLES, NODE_LOCAL_TABLES};
use crate::keys::onion_address::OnionAddress;

/// The first lines of a config.toml the cluster rewrote.
const COMPOSED_HEADER: &str = "\
# RustBalance node configuration: see README.md, \"Configuration reference\".
# [node], [cluster], [status] and [arti.storage] belong to this node. Everything else is the
# cluster's shared configuration, the same on every member: change it on any one member
# (`rustbalance backend ...`, or edit this file and reload) and the others follow. This file
# is rewritten when another member changes it (comments are not kept).

";

/// An operator's change to the list of backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEdit {
    Add {
        name: BackendName,
        address: OnionAddress,
    },
    Remove(BackendName),
    /// Keep it out of the descriptor (maintenance) without forgetting it.
    Exclude(BackendName),
    /// Let an excluded backend back in.
    Include(BackendName),
}

/// Why an edit cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("a backend named {0:?} exists already")]
    NameTaken(String),
    #[error("{address} is already configured, as backend {name:?}")]
    AddressTaken { address: OnionAddress, name: String },
    #[error("no backend is named {0:?}")]
    NoSuchBackend(String),
    #[error("the configuration is not valid TOML: {0}")]
    Unreadable(String),
    #[error("config.toml: {0} must be a table")]
    NotATable(&'static str),
}

/// The shared text after `edit`. Unchanged text means the edit changes nothing (a backend
/// excluded twice).
pub fn edit_backends(shared_text: &str, edit: &BackendEdit) -> Result<String, EditError> {
    let mut table = parse(shared_text)?;
    let backends = match table
        .entry("backends")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(backends) => backends,
        _ => return Err(EditError::NotATable("backends")),
    };
    let name_of = |backend: &Value| {
        backend
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let position = |backends: &[Value], wanted: &BackendName| {
        backends
            .iter()
            .position(|backend| name_of(backend).as_deref() == Some(wanted.as_str()))
            .ok_or_else(|| EditError::NoSuchBackend(wanted.as_str().to_owned()))
    };
    match edit {
        BackendEdit::Add { name, address } => {
            for backend in backends.iter() {
                let existing = name_of(backend).unwrap_or_default();
                if existing == name.as_str() {
                    return Err(EditError::NameTaken(existing));
                }
                let same_address = backend
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(|text| text.parse::<OnionAddress>().ok())
                    == Some(*address);
                if same_address {
                    return Err(EditError::AddressTaken {
                        address: *address,
                        name: existing,
                    });
                }
            }
            let mut backend = Table::new();
            backend.insert("name".into(), Value::String(name.as_str().to_owned()));
            backend.insert("address".into(), Value::String(address.to_string()));
            backends.push(Value::Table(backend));
        }
        BackendEdit::Remove(name) => {
            let index = position(backends, name)?;
            backends.remove(index);
        }
        BackendEdit::Exclude(name) | BackendEdit::Include(name) => {
            let index = position(backends, name)?;
            let Value::Table(backend) = &mut backends[index] else {
                return Err(EditError::NotATable("backends"));
            };
            if matches!(edit, BackendEdit::Exclude(_)) {
                backend.insert("exclude".into(), Value::Boolean(true));
            } else {
                backend.remove("exclude");
            }
        }
    }
    if backends.is_empty() {
        table.remove("backends");
    }
    Ok(toml::to_string(&table).unwrap_or_default())
}

/// A whole config.toml: this node's own tables from `file_text`, the shared ones from
/// `shared_text` (what the file had of those is replaced).
pub fn compose(file_text: &str, shared_text: &str) -> Result<String, EditError> {
    let own = parse(file_text)?;
    let mut composed = parse(shared_text)?;
    // A shared text never carries a node's own tables; if one did, the node's win.
    for name in NODE_LOCAL_TABLES {
        composed.remove(*name);
        if let Some(table) = own.get(*name) {
            composed.insert((*name).to_owned(), table.clone());
        }
    }
    let own_arti = own.get("arti").and_then(Value::as_table);
    let arti = match composed
        .entry("arti")
        .or_insert_with(|| Value::Table(Table::new()))
    {
        Value::Table(arti) => arti,
        _ => return Err(EditError::NotATable("arti")),
    };
    for name in NODE_LOCAL_ARTI_TABLES {
        arti.remove(*name);
        if let Some(table) = own_arti.and_then(|own| own.get(*name)) {
            arti.insert((*name).to_owned(), table.clone());
        }
    }
    if arti.is_empty() {
        composed.remove("arti");
    }
    Ok(format!(
        "{COMPOSED_HEADER}{}",
        toml::to_string(&composed).unwrap_or_default()
    ))
}

fn parse(text: &str) -> Result<Table, EditError> {
    text.parse::<Table>()
        .map_err(|err| EditError::Unreadable(super::one_line(err.message())))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const A: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";
    const B: &str = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";

    fn node_file(shared: &str) -> String {
        format!(
            "# a comment\n[node]\nid = \"node-a\"\npriority = 1\n\n[cluster]\nlisten = \"127.0.0.1:5000\"\n\n\
             [arti.storage]\ncache_dir = \"/var/lib/here/cache\"\nstate_dir = \"/var/lib/here/state\"\n\n{shared}"
        )
    }

    fn load(text: &str) -> Config {
        Config::parse(
            text,
            Path::new("config.toml"),
            Path::new("/etc/rb"),
            Path::new("/var/lib/rb"),
        )
        .unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    fn add(name: &str, address: &str) -> BackendEdit {
        BackendEdit::Add {
            name: BackendName::try_from(name.to_owned()).unwrap(),
            address: address.parse().unwrap(),
        }
    }

    fn named(name: &str) -> BackendName {
        BackendName::try_from(name.to_owned()).unwrap()
    }

    #[test]
    fn composing_keeps_the_nodes_own_tables_and_takes_the_shared_ones() {
        let mine = load(&node_file(&format!(
            "[[backends]]\nname = \"old\"\naddress = \"{A}\"\n\n[timing]\nhealth_interval_secs = 99\n"
        )));
        let theirs = load(&node_file(&format!(
            "[[backends]]\nname = \"web\"\naddress = \"{B}\"\n\n[health]\ndead_after_failures = 7\n\n\
             [arti.network]\nfallback_caches = []\n"
        )))
        .shared_text()
        .to_owned();
        let composed = load(&compose(&node_file(""), &theirs).unwrap());
        assert_eq!(composed.node.id, mine.node.id);
        assert_eq!(composed.cluster.listen, mine.cluster.listen);
        assert_eq!(composed.backends.len(), 1);
        assert_eq!(composed.backends[0].name.as_str(), "web");
        assert_eq!(composed.health.dead_after_failures, 7);
        assert_eq!(composed.timing, crate::config::TimingConfig::default());
        assert_eq!(
            composed.arti["storage"]["cache_dir"].as_str(),
            Some("/var/lib/here/cache")
        );
        assert!(composed.arti.contains_key("network"));
        // What it shares is exactly what it received: versions compare by text.
        assert_eq!(composed.shared_text(), theirs);
    }

    #[test]
    fn backends_are_added_removed_excluded_and_included_by_name() {
        let shared = load(&node_file(&format!(
            "[[backends]]\nname = \"a\"\naddress = \"{A}\"\n"
        )))
        .shared_text()
        .to_owned();
        let added = edit_backends(&shared, &add("b", B)).unwrap();
        let config = load(&compose(&node_file(""), &added).unwrap());
        let names: Vec<_> = config.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);

        let excluded = edit_backends(&added, &BackendEdit::Exclude(named("a"))).unwrap();
        assert!(load(&compose(&node_file(""), &excluded).unwrap()).backends[0].exclude);
        assert_eq!(
            edit_backends(&excluded, &BackendEdit::Exclude(named("a"))).unwrap(),
            excluded,
            "excluding twice changes nothing"
        );
        let included = edit_backends(&excluded, &BackendEdit::Include(named("a"))).unwrap();
        assert!(!load(&compose(&node_file(""), &included).unwrap()).backends[0].exclude);

        let removed = edit_backends(&included, &BackendEdit::Remove(named("a"))).unwrap();
        let removed = edit_backends(&removed, &BackendEdit::Remove(named("b"))).unwrap();
        assert!(load(&compose(&node_file(""), &removed).unwrap())
            .backends
            .is_empty());
    }

    #[test]
    fn an_edit_that_cannot_be_made_says_why() {
        let shared = format!("[[backends]]\nname = \"a\"\naddress = \"{A}\"\n");
        assert_eq!(
            edit_backends(&shared, &add("a", B)),
            Err(EditError::NameTaken("a".into()))
        );
        assert!(matches!(
            edit_backends(&shared, &add("b", A)),
            Err(EditError::AddressTaken { name, .. }) if name == "a"
        ));
        assert_eq!(
            edit_backends(&shared, &BackendEdit::Remove(named("zz"))),
            Err(EditError::NoSuchBackend("zz".into()))
        );
        assert!(matches!(
            edit_backends("backends = 3", &add("b", B)),
            Err(EditError::NotATable("backends"))
        ));
        assert!(matches!(
            edit_backends("[[", &add("b", B)),
            Err(EditError::Unreadable(_))
        ));
    }
}
