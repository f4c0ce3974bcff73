//! Resource quantities and the resources a pod requests or a node offers.

use std::collections::BTreeMap;

use keelson_core::k8s_openapi::api::core::v1::{Container, PodSpec};
use keelson_core::k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The CPU a container without a CPU request counts for when scoring (100m), as in
/// Kubernetes.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory a container without a memory request counts for when scoring (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Parses a Kubernetes quantity (`100m`, `1.5`, `128Mi`, `1G`, `2e3`) and returns its
/// value multiplied by `scale` (1000 for milli-units, 1 for units), rounded up.
/// `None` for a malformed quantity or one that does not fit an `i64`.
pub fn parse_quantity(s: &str, scale: i128) -> Option<i64> {
    let s = s.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "." {
        return None;
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') || int_part.len() + frac_part.len() > 30 {
        return None;
    }
    let mut mantissa: i128 = 0;
    for c in int_part.chars().chain(frac_part.chars()) {
        mantissa = mantissa * 10 + i128::from(c.to_digit(10)?);
    }
    // value = mantissa * num / den
    let mut num: i128 = scale;
    let mut den: i128 = 10i128.checked_pow(u32::try_from(frac_part.len()).ok()?)?;
    let pow10 = |e: i32| -> Option<(i128, i128)> {
        if e >= 0 {
            Some((10i128.checked_pow(e.unsigned_abs())?, 1))
        } else {
            Some((1, 10i128.checked_pow(e.unsigned_abs())?))
        }
    };
    let (m_num, m_den) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "n" => pow10(-9)?,
        "u" => pow10(-6)?,
        "m" => pow10(-3)?,
        "k" => pow10(3)?,
        "M" => pow10(6)?,
        "G" => pow10(9)?,
        "T" => pow10(12)?,
        "P" => pow10(15)?,
        "E" => pow10(18)?,
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if !(-30..=30).contains(&e) {
                return None;
            }
            pow10(e)?
        }
        _ => return None,
    };
    num = num.checked_mul(m_num)?;
    den = den.checked_mul(m_den)?;
    let product = mantissa.checked_mul(num)?;
    let mut value = product / den;
    if product % den != 0 {
        value += 1;
    }
    if negative {
        value = -value;
    }
    i64::try_from(value).ok()
}

/// An amount of each resource: CPU in millicores, memory and ephemeral storage in
/// bytes, a pod count, and every other (extended) resource in its own units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU, in millicores.
    pub milli_cpu: i64,
    /// Memory, in bytes.
    pub memory: i64,
    /// Ephemeral storage, in bytes.
    pub ephemeral_storage: i64,
    /// Pods (a node's capacity; a pod requests none here, the fit check counts pods).
    pub pods: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`, ...).
    pub scalar: BTreeMap<String, i64>,
}

/// Whether a resource name is one of the scalar resources the fit check counts.
fn is_scalar(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-") || name.starts_with("attachable-volumes-")
}

impl Resources {
    /// Resources from a resource list (`requests`, `allocatable`). Malformed quantities
    /// count as zero; the API server refuses them on the way in.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list {
            r.set(name, &q.0);
        }
        r
    }

    fn set(&mut self, name: &str, quantity: &str) {
        match name {
            "cpu" => self.milli_cpu = parse_quantity(quantity, 1000).unwrap_or(0),
            "memory" => self.memory = parse_quantity(quantity, 1).unwrap_or(0),
            "ephemeral-storage" => {
                self.ephemeral_storage = parse_quantity(quantity, 1).unwrap_or(0);
            }
            "pods" => self.pods = parse_quantity(quantity, 1).unwrap_or(0),
            other if is_scalar(other) => {
                self.scalar
                    .insert(other.to_owned(), parse_quantity(quantity, 1).unwrap_or(0));
            }
            _ => {}
        }
    }

    /// Adds `other` to these resources.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.pods = self.pods.saturating_add(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Subtracts `other` from these resources.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        self.pods = self.pods.saturating_sub(other.pods);
        for (k, v) in &other.scalar {
            if let Some(e) = self.scalar.get_mut(k) {
                *e = e.saturating_sub(*v);
            }
        }
    }

    /// Each resource the larger of the two.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.pods = self.pods.max(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    /// The amount of one resource by its Kubernetes name.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            other => self.scalar.get(other).copied().unwrap_or(0),
        }
    }
}

/// What one container requests: its requests, or its limits where it sets no request
/// (as the API server's defaulting does).
fn container_requests(c: &Container) -> Resources {
    let mut r = Resources::default();
    if let Some(res) = &c.resources {
        if let Some(limits) = &res.limits {
            for (name, q) in limits {
                r.set(name, &q.0);
            }
        }
        if let Some(requests) = &res.requests {
            for (name, q) in requests {
                r.set(name, &q.0);
            }
        }
    }
    r
}

/// The requests of a pod as the scheduler counts them: its containers' requests summed
/// (restartable init containers, "sidecars", included), or the largest init container
/// step if that is more, plus the pod's overhead. The second value is the same with
/// 100m CPU and 200 MiB memory for containers that request none (used by scoring).
pub fn pod_requests(spec: &PodSpec) -> (Resources, Resources) {
    let zero_default = |mut r: Resources| {
        if r.milli_cpu == 0 {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if r.memory == 0 {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
        r
    };
    let mut reqs = Resources::default();
    let mut non_zero = Resources::default();
    for c in &spec.containers {
        let r = container_requests(c);
        non_zero.add(&zero_default(r.clone()));
        reqs.add(&r);
    }
    let mut sidecars = Resources::default();
    let mut sidecars_nz = Resources::default();
    let mut init_max = Resources::default();
    let mut init_max_nz = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        let nz = zero_default(r.clone());
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&r);
            non_zero.add(&nz);
            sidecars.add(&r);
            sidecars_nz.add(&nz);
            init_max.max_with(&sidecars);
            init_max_nz.max_with(&sidecars_nz);
        } else {
            let mut step = r;
            step.add(&sidecars);
            let mut step_nz = nz;
            step_nz.add(&sidecars_nz);
            init_max.max_with(&step);
            init_max_nz.max_with(&step_nz);
        }
    }
    reqs.max_with(&init_max);
    non_zero.max_with(&init_max_nz);
    if let Some(overhead) = &spec.overhead {
        let o = Resources::from_list(overhead);
        reqs.add(&o);
        non_zero.add(&o);
    }
    (reqs, non_zero)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::core::v1::ResourceRequirements;

    #[test]
    fn quantities_parse_as_kubernetes_reads_them() {
        assert_eq!(parse_quantity("100m", 1000), Some(100));
        assert_eq!(parse_quantity("1.5", 1000), Some(1500));
        assert_eq!(parse_quantity("2", 1000), Some(2000));
        assert_eq!(parse_quantity("128Mi", 1), Some(128 << 20));
        assert_eq!(parse_quantity("1G", 1), Some(1_000_000_000));
        assert_eq!(parse_quantity("2e3", 1), Some(2000));
        assert_eq!(parse_quantity("1m", 1), Some(1), "rounded up");
        assert_eq!(parse_quantity("0.1", 1000), Some(100));
        assert_eq!(parse_quantity("abc", 1), None);
        assert_eq!(parse_quantity("1Qi", 1), None);
        assert_eq!(parse_quantity("", 1), None);
        assert_eq!(parse_quantity("99999999999999999999Ei", 1), None);
    }

    fn container(cpu: &str, mem: &str) -> Container {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_owned(), Quantity(cpu.into()));
        }
        if !mem.is_empty() {
            requests.insert("memory".to_owned(), Quantity(mem.into()));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    #[test]
    fn pod_requests_take_the_larger_of_containers_and_init_steps() {
        let mut init = container("2", "1Gi");
        init.name = "init".into();
        let mut sidecar = container("100m", "");
        sidecar.restart_policy = Some("Always".into());
        let spec = PodSpec {
            containers: vec![container("500m", "256Mi"), container("250m", "")],
            init_containers: Some(vec![sidecar, init]),
            ..PodSpec::default()
        };
        let (reqs, non_zero) = pod_requests(&spec);
        // init step: 2 cores + the sidecar's 100m started before it.
        assert_eq!(reqs.milli_cpu, 2100);
        assert_eq!(reqs.memory, 1 << 30);
        assert_eq!(non_zero.milli_cpu, 2100);
        // containers: 256Mi + 200Mi default + sidecar's 200Mi default < init step (1Gi + 200Mi).
        assert_eq!(non_zero.memory, (1 << 30) + DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some([("cpu".to_owned(), Quantity("1".into()))].into()),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        };
        assert_eq!(container_requests(&c).milli_cpu, 1000);
    }
}
