//! Onionbalance's configuration (`config.yaml`, v3 services), read to set a node up from it
//! (`rustbalance import onionbalance`).
//!
//! The part RustBalance needs is one service: its master key file (`key`, relative to the
//! YAML file's directory, PEM or tor's format) and its instances (`address`, optional `name`),
//! which become `[[backends]]`. Onionbalance settings that have no counterpart here (its
//! tor control port, log level) are ignored; a file with several services is refused, since
//! one node balances one master address.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use super::BackendName;
use crate::keys::onion_address::{OnionAddress, OnionAddressError};

/// The largest config.yaml read: Onionbalance's are a few hundred bytes.
const MAX_FILE_LEN: u64 = 1 << 20;

/// One Onionbalance service, ready for `init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnionbalanceService {
    /// The master key file, resolved against the YAML file's directory.
    pub key: PathBuf,
    pub instances: Vec<(BackendName, OnionAddress)>,
}

/// Why an Onionbalance configuration cannot be imported. Each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum OnionbalanceConfigError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than 1 MiB: not an Onionbalance configuration")]
    TooLarge { path: PathBuf },
    #[error("{path}: not valid YAML: {message}")]
    NotYaml { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Read and check Onionbalance's `config.yaml` at `path`.
pub fn read(path: &Path) -> Result<OnionbalanceService, OnionbalanceConfigError> {
    let unreadable = |source| OnionbalanceConfigError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(unreadable)?.len();
    if len > MAX_FILE_LEN {
        return Err(OnionbalanceConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = crate::storage::fsutil::read_bounded_string(path).map_err(unreadable)?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|error| match error {
        ParseError::Yaml(message) => OnionbalanceConfigError::NotYaml {
            path: path.to_owned(),
            message,
        },
        ParseError::Invalid { key, message } => OnionbalanceConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        },
    })
}

enum ParseError {
    Yaml(String),
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ParseError {
    ParseError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The service in `text`; relative key paths are resolved against `base`.
fn parse(text: &str, base: &Path) -> Result<OnionbalanceService, ParseError> {
    let documents =
        YamlLoader::load_from_str(text).map_err(|err| ParseError::Yaml(err.to_string()))?;
    let root = documents
        .first()
        .ok_or_else(|| invalid("services", "the file is empty"))?;
    let services = root["services"]
        .as_vec()
        .ok_or_else(|| invalid("services", "missing, or not a list"))?;
    let service = match services.as_slice() {
        [service] => service,
        [] => return Err(invalid("services", "the list is empty")),
        more => {
            return Err(invalid(
                "services",
                format!(
                    "{} services: a RustBalance node balances one master address; import each into its own config directory (--config-dir) from a file listing only that service",
                    more.len()
                ),
            ))
        }
    };
    let key = service["key"]
        .as_str()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| invalid("services[0].key", "missing, or not a file name"))?;
    let instances = service["instances"]
        .as_vec()
        .ok_or_else(|| invalid("services[0].instances", "missing, or not a list"))?;
    if instances.is_empty() {
        return Err(invalid("services[0].instances", "the list is empty"));
    }
    let mut backends: Vec<(BackendName, OnionAddress)> = Vec::with_capacity(instances.len());
    for (index, instance) in instances.iter().enumerate() {
        let key = |field: &str| format!("services[0].instances[{index}].{field}");
        let address = instance["address"]
            .as_str()
            .ok_or_else(|| invalid(key("address"), "missing, or not text"))?;
        // With or without `.onion`, as Onionbalance accepts it.
        let address: OnionAddress = address
            .parse()
            .map_err(|reason: OnionAddressError| invalid(key("address"), reason.to_string()))?;
        let name = match &instance["name"] {
            Yaml::BadValue | Yaml::Null => format!("instance{}", index + 1),
            Yaml::String(name) => name.clone(),
            // Onionbalance writes names such as `node1`; a number is a name too.
            Yaml::Integer(number) => number.to_string(),
            _ => return Err(invalid(key("name"), "not text")),
        };
        let name = BackendName::try_from(name).map_err(|reason| invalid(key("name"), reason))?;
        if let Some((other, _)) = backends.iter().find(|(_, a)| *a == address) {
            return Err(invalid(
                key("address"),
                format!("{address} is listed twice (also as {other})"),
            ));
        }
        if backends.iter().any(|(n, _)| *n == name) {
            return Err(invalid(key("name"), format!("{name:?} is used twice")));
        }
        backends.push((name, address));
    }
    Ok(OnionbalanceService {
        key: base.join(key),
        instances: backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";
    const B: &str = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";

    fn parse_text(text: &str) -> Result<OnionbalanceService, String> {
        parse(text, Path::new("/etc/onionbalance")).map_err(|err| match err {
            ParseError::Yaml(message) => format!("yaml: {message}"),
            ParseError::Invalid { key, message } => format!("{key}: {message}"),
        })
    }

    #[test]
    fn onionbalance_config_config_output_is_read() {
        // As `onionbalance-config` writes it.
        let service = parse_text(&format!(
            "services:\n- instances:\n  - address: {A}\n    name: node1\n  - address: {}\n    name: node2\n  key: master.key\n",
            B.trim_end_matches(".onion")
        ))
        .unwrap();
        assert_eq!(service.key, Path::new("/etc/onionbalance/master.key"));
        let instances: Vec<(String, String)> = service
            .instances
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect();
        assert_eq!(
            instances,
            [
                ("node1".to_owned(), A.to_owned()),
                ("node2".to_owned(), B.to_owned())
            ]
        );
    }

    #[test]
    fn flow_style_quotes_comments_and_absolute_keys() {
        let service = parse_text(&format!(
            "# hand-written\nservices: [{{key: \"/srv/ob/key.pem\", instances: [{{address: '{A}'}}]}}]\n"
        ))
        .unwrap();
        assert_eq!(service.key, Path::new("/srv/ob/key.pem"));
        assert_eq!(service.instances[0].0.as_str(), "instance1");
    }

    #[test]
    fn every_mistake_names_its_key() {
        let cases = [
            ("", "services: the file is empty"),
            ("services: 3\n", "services: missing, or not a list"),
            ("services: []\n", "services: the list is empty"),
            (
                "services:\n- key: k\n  instances: []\n- key: l\n  instances: []\n",
                "services: 2 services: a RustBalance node balances one master address",
            ),
            (
                "services:\n- instances: [{address: x}]\n",
                "services[0].key: missing",
            ),
            (
                "services:\n- key: k\n  instances:\n  - name: a\n",
                "services[0].instances[0].address: missing",
            ),
            (
                "services:\n- key: k\n  instances:\n  - address: abc.onion\n",
                "services[0].instances[0].address: ",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_text(text).unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
        let twice = parse_text(&format!(
            "services:\n- key: k\n  instances:\n  - address: {A}\n  - address: {A}\n"
        ))
        .unwrap_err();
        assert!(twice.contains("listed twice"), "{twice}");
        assert!(parse_text("services: [").unwrap_err().starts_with("yaml: "));
    }
}
