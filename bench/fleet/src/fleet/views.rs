//! What each simulated Discover proxy subscribes to, and so which streams a
//! change must reach: the bench knows every view, so it can tell a stream
//! that was sent a message it has no use for.
//!
//! Proxy i uses svc-0 (the hot Service, behind the canary route) and `uses
//! - 1` Services spread over the mesh, so that each cold Service has about
//! `uses × proxies / services` subscribers.

use std::collections::BTreeSet;

use super::NAMESPACE;

/// The Services of the mesh, as the bench laid them out.
#[derive(Clone, Copy, Debug)]
pub struct Mesh {
    /// svc-0 .. svc-(services - 1).
    pub services: usize,
    /// The Service of the cold route (it sends to itself only), if the mesh
    /// has one that no other Service's route sends to.
    pub cold: Option<usize>,
}

impl Mesh {
    pub fn new(services: usize) -> Mesh {
        // svc-0 and svc-1 are in every view (the canary route); any other
        // Service is cold. 7 when there is one, as the examples.
        let cold = match services {
            0..=2 => None,
            3..=7 => Some(services - 1),
            _ => Some(7),
        };
        Mesh { services, cold }
    }

    /// The Services proxy `i` subscribes to in its first request.
    pub fn subscriptions(&self, i: usize, uses: usize) -> BTreeSet<usize> {
        let s = self.services.max(1);
        let mut subs = BTreeSet::from([0]);
        let spread = uses.saturating_sub(1);
        for j in 1..=spread {
            subs.insert((i + j * s / spread) % s);
        }
        subs
    }

    /// The closure of `subs` over route backends: svc-0's canary route
    /// sends to svc-1 too; the cold route sends only to its own Service.
    pub fn view(&self, subs: &BTreeSet<usize>) -> BTreeSet<usize> {
        let mut v = subs.clone();
        if v.contains(&0) && self.services > 1 {
            v.insert(1);
        }
        v
    }

    /// A Service proxy `i` does not hold (for a first use), if any.
    pub fn unused(&self, i: usize, held: &BTreeSet<usize>) -> Option<usize> {
        let s = self.services;
        let start = (i.wrapping_mul(31) + s / 2) % s.max(1);
        (0..s).map(|d| (start + d) % s).find(|k| !held.contains(k))
    }
}

/// The "namespace/name" key of svc-`k`.
pub fn key(k: usize) -> String {
    format!("{NAMESPACE}/svc-{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_spread_over_the_mesh() {
        let mesh = Mesh::new(100);
        assert_eq!(mesh.cold, Some(7));
        let subs = mesh.subscriptions(3, 5);
        assert_eq!(subs, BTreeSet::from([0, 3, 28, 53, 78]));
        assert_eq!(mesh.view(&subs).len(), 6);
        // Each cold Service has about uses × proxies / services subscribers
        // (uses - 1 here: svc-0 is the fifth).
        let n = 1000;
        let of7 = (0..n)
            .filter(|&i| mesh.subscriptions(i, 5).contains(&7))
            .count();
        assert_eq!(of7, 40);
        // One use: svc-0 alone.
        assert_eq!(mesh.subscriptions(9, 1), BTreeSet::from([0]));
    }

    #[test]
    fn an_unused_service_is_not_held() {
        let mesh = Mesh::new(10);
        let held = mesh.view(&mesh.subscriptions(4, 5));
        let k = mesh.unused(4, &held).unwrap();
        assert!(!held.contains(&k));
        let all: BTreeSet<usize> = (0..10).collect();
        assert_eq!(mesh.unused(4, &all), None);
        assert_eq!(Mesh::new(2).cold, None);
        assert_eq!(Mesh::new(5).cold, Some(4));
    }
}
