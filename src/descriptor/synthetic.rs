//! Introduction points with real, random keys and no relay behind them: for the unit tests
//! and benchmarks of merging and building, which need descriptors of realistic size but no
//! network. Never published.

use tor_llcrypto::pk::{curve25519, ed25519};
use tor_netdoc::doc::hsdesc::IntroPointDesc;

/// `count` introduction points, each with fresh random keys and a loopback OR port.
pub fn synthetic_intro_points(count: usize) -> Vec<IntroPointDesc> {
    let curve_key = || {
        // Random keys, not fixed bytes: the descriptor builder converts the service key to
        // ed25519, which fails for some byte patterns.
        let secret = curve25519::StaticSecret::random_from_rng(rand::rng());
        curve25519::PublicKey::from(&secret)
    };
    (0..count)
        .map(|i| {
            let port = 9000 + u16::try_from(i % 50_000).unwrap_or(0);
            let link_specifier =
                tor_linkspec::LinkSpec::OrPort(std::net::Ipv4Addr::LOCALHOST.into(), port)
                    .encode()
                    .expect("an IPv4 OR-port link specifier always encodes");
            IntroPointDesc::builder()
                .link_specifiers(vec![link_specifier])
                .ipt_kp_ntor(curve_key())
                .kp_hs_ipt_sid(
                    ed25519::Keypair::generate(&mut rand::rng())
                        .verifying_key()
                        .into(),
                )
                .kp_hss_ntor(curve_key().into())
                .build()
                .expect("every field of the introduction point is set")
        })
        .collect()
}
