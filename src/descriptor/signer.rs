//! What the publish plan needs from the master key: a revision counter, the blinded identity
//! the HSDirs index the descriptor by, and a built, signed descriptor for a list of
//! introduction points.
//!
//! [`DescriptorSigner`] is that, as a trait, so the plan's decisions (which periods, which
//! introduction points, which revision, when) are the same code whether the descriptor is
//! really signed ([`MasterSigner`], the daemon) or only modelled (the whole-cluster simulator
//! in `tests/`, where signing thousands of descriptors would cost minutes).

use std::collections::HashMap;
use std::sync::Arc;

use tor_hscrypto::ope::SrvPeriodOffset;
use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;
use tor_linkspec::LinkSpec;
use tor_netdoc::doc::hsdesc::IntroPointDesc;

use super::build::{
    build_descriptor, BlindedIdentity, BuildError, DescriptorParams, MasterIdentity,
};
use crate::keys::onion_address::OnionAddress;

/// See the module documentation.
pub trait DescriptorSigner {
    /// An introduction point as the health checks hand it over.
    type IntroPoint: Clone;

    /// The master address, for the log.
    fn address(&self) -> OnionAddress;

    /// A stable identity of an introduction point, unchanged while its backend keeps it.
    fn intro_point_id(intro_point: &Self::IntroPoint) -> String;

    /// The relay an introduction point sits on: a descriptor lists one per relay (see
    /// `descriptor::merge`).
    fn intro_point_relay(intro_point: &Self::IntroPoint) -> String;

    /// The revision counter of a descriptor for `period` built `srv_offset_secs` seconds after
    /// the start of its SRV period. Strictly increasing in the offset, and the same on every
    /// node that holds the master key (rend-spec-v3 Appendix F.2).
    fn revision_counter(
        &mut self,
        period: TimePeriod,
        srv_offset_secs: u32,
    ) -> Result<u64, BuildError>;

    /// The blinded identity for `period`: where the HSDirs keep the descriptor.
    fn blind_id(&mut self, period: TimePeriod) -> Result<HsBlindId, BuildError>;

    /// Build and sign the descriptor for `period`.
    fn build(
        &mut self,
        period: TimePeriod,
        params: &DescriptorParams<'_, Self::IntroPoint>,
    ) -> Result<String, BuildError>;

    /// Forget what was computed for periods other than `periods`.
    fn retain_periods(&mut self, periods: &[u64]);
}

/// The real signer: the master key, blinded once per period.
pub struct MasterSigner {
    master: MasterIdentity,
    /// The master key blinded for each period we publish, computed once per period.
    blinded: HashMap<u64, Arc<BlindedIdentity>>,
}

impl MasterSigner {
    pub fn new(master: MasterIdentity) -> Self {
        MasterSigner {
            master,
            blinded: HashMap::new(),
        }
    }

    /// The master key blinded for `period`, from the cache or computed now.
    fn blinded_for(&mut self, period: TimePeriod) -> Result<Arc<BlindedIdentity>, BuildError> {
        if let Some(blinded) = self.blinded.get(&period.interval_num()) {
            return Ok(blinded.clone());
        }
        let blinded = Arc::new(self.master.blind(period)?);
        self.blinded.insert(period.interval_num(), blinded.clone());
        Ok(blinded)
    }
}

impl DescriptorSigner for MasterSigner {
    type IntroPoint = IntroPointDesc;

    fn address(&self) -> OnionAddress {
        self.master.address()
    }

    fn intro_point_id(intro_point: &IntroPointDesc) -> String {
        intro_point_id(intro_point)
    }

    fn intro_point_relay(intro_point: &IntroPointDesc) -> String {
        intro_point_relay(intro_point)
    }

    fn revision_counter(
        &mut self,
        period: TimePeriod,
        srv_offset_secs: u32,
    ) -> Result<u64, BuildError> {
        Ok(self
            .blinded_for(period)?
            .revision_counter(SrvPeriodOffset::from(srv_offset_secs)))
    }

    fn blind_id(&mut self, period: TimePeriod) -> Result<HsBlindId, BuildError> {
        Ok(self.blinded_for(period)?.blind_id())
    }

    fn build(
        &mut self,
        period: TimePeriod,
        params: &DescriptorParams<'_, IntroPointDesc>,
    ) -> Result<String, BuildError> {
        let blinded = self.blinded_for(period)?;
        build_descriptor(&blinded, params, &mut rand::rng())
    }

    fn retain_periods(&mut self, periods: &[u64]) {
        self.blinded.retain(|period, _| periods.contains(period));
    }
}

/// The relay an introduction point sits on, as C-tor clients identify it: the RSA identity of
/// its link specifiers (else the ed25519 identity; an introduction point with neither, which
/// no client could reach, counts as a relay of its own).
pub fn intro_point_relay(intro_point: &IntroPointDesc) -> String {
    let parsed = || {
        intro_point
            .link_specifiers()
            .iter()
            .filter_map(|spec| spec.parse().ok())
    };
    parsed()
        .find_map(|spec| match spec {
            LinkSpec::RsaId(id) => Some(format!("rsa:{}", id.as_hex_upper())),
            _ => None,
        })
        .or_else(|| {
            parsed().find_map(|spec| match spec {
                LinkSpec::Ed25519Id(id) => Some(format!("ed25519:{id}")),
                _ => None,
            })
        })
        .unwrap_or_else(|| format!("auth-key:{}", intro_point_id(intro_point)))
}

/// A stable identity for an introduction point: its auth key (`KP_hs_ipt_sid`), unique per
/// introduction point and unchanged while the backend keeps it.
pub fn intro_point_id(intro_point: &IntroPointDesc) -> String {
    let key: &tor_llcrypto::pk::ed25519::PublicKey = intro_point.ipt_sid_key().as_ref();
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}
