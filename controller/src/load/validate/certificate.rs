//! Certificate checks: issuers (ACME with its solvers and DNS providers, AWS IoT with
//! fleet provisioning) as the CRD's CEL rules hold them in a cluster, and the Secrets
//! they read.

use std::net::IpAddr;

use crate::api::certificate::{
    AcmeIssuer, AwsIotIssuer, CertificateSpec, Dns01Solver, FleetProvisioning, KeyOrigin,
};

use super::super::locate::Seg;
use super::super::{Kind, ObjectRef};
use super::formats::{dns_subdomain, go_duration, nameserver_addr};
use super::Validator;

impl Validator<'_> {
    /// The ACME parts CEL checks in a cluster: names, exactly one solver, exactly one
    /// DNS provider, and the Secrets they read.
    fn acme(&mut self, c: &ObjectRef, acme: &AcmeIssuer, spec: &CertificateSpec) {
        let ap = |f| {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("acme"),
                Seg::Key(f),
            ]
        };
        if spec.dns_names.is_empty() {
            self.err(
                c,
                &[Seg::Key("spec"), Seg::Key("dnsNames")],
                "an acme Certificate needs at least one DNS name",
            );
        }
        if !spec.ip_addresses.is_empty() {
            self.err(
                c,
                &[Seg::Key("spec"), Seg::Key("ipAddresses")],
                "the acme issuer does not issue certificates for IP addresses; use dnsNames",
            );
        }
        if let Some(r) = &acme.ca_bundle_secret_ref {
            self.secret_key_ref(c, &ap("caBundleSecretRef"), r);
        }
        let solver = &acme.solver;
        let sp = |f| {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("acme"),
                Seg::Key("solver"),
                Seg::Key(f),
            ]
        };
        if solver.dns01.is_some() == solver.http01.is_some() {
            self.err(c, &ap("solver"), "set exactly one of dns01 and http01");
        }
        if let Some(h) = &solver.http01 {
            if h.port == Some(0) {
                self.err(c, &sp("http01"), "port 0 is out of range 1..=65535");
            }
            if let Some(a) = &h.bind_address {
                if a.parse::<IpAddr>().is_err() {
                    self.err(
                        c,
                        &sp("http01"),
                        format!("bindAddress `{a}` is not an IP address"),
                    );
                }
            }
        }
        if let Some(d) = &solver.dns01 {
            if !d.has_one_provider() {
                self.err(
                    c,
                    &sp("dns01"),
                    "set exactly one DNS provider: rfc2136, cloudflare, route53 or exec",
                );
            }
        }
    }

    pub(super) fn certificates(&mut self) {
        let res = self.res;
        for c in res.certificates() {
            let spec = &c.object.spec;
            let sp = |f| [Seg::Key("spec"), Seg::Key(f)];
            if let Some(s) = &spec.secret_name {
                if !dns_subdomain(s) {
                    self.err(c, &sp("secretName"), format!("invalid secretName `{s}`"));
                }
            }
            for (field, v) in [
                ("duration", &spec.duration),
                ("renewBefore", &spec.renew_before),
            ] {
                if let Some(d) = v {
                    if !go_duration(d) {
                        self.err(
                            c,
                            &sp(field),
                            format!("{field} `{d}` is not a duration such as `2160h` or `1h30m`"),
                        );
                    }
                }
            }
            for (i, ip) in spec.ip_addresses.iter().enumerate() {
                if ip.parse::<IpAddr>().is_err() {
                    self.err(
                        c,
                        &[Seg::Key("spec"), Seg::Key("ipAddresses"), Seg::Index(i)],
                        format!("`{ip}` is not an IP address"),
                    );
                }
            }
            let is = &spec.issuer;
            let set = [
                is.self_signed.is_some(),
                is.ca.is_some(),
                is.acme.is_some(),
                is.aws_iot.is_some(),
            ];
            if set.iter().filter(|x| **x).count() != 1 {
                self.err(
                    c,
                    &sp("issuer"),
                    "set exactly one issuer: selfSigned, ca, acme or awsIot",
                );
            }
            if let Some(ca) = &is.ca {
                let path = [
                    Seg::Key("spec"),
                    Seg::Key("issuer"),
                    Seg::Key("ca"),
                    Seg::Key("secretRef"),
                ];
                self.len(c, &path, &ca.secret_ref, 1, 253);
                if !ca.secret_ref.is_empty() {
                    self.tls_secret_ref(c, &path, &ca.secret_ref);
                }
            }
            if let Some(acme) = &is.acme {
                self.http_url(
                    c,
                    &[
                        Seg::Key("spec"),
                        Seg::Key("issuer"),
                        Seg::Key("acme"),
                        Seg::Key("server"),
                    ],
                    &acme.server,
                );
                if let Some(d) = &acme.solver.dns01 {
                    self.dns01_provider(c, d);
                }
                if let Some(eab) = &acme.external_account_binding {
                    let path = [
                        Seg::Key("spec"),
                        Seg::Key("issuer"),
                        Seg::Key("acme"),
                        Seg::Key("externalAccountBinding"),
                        Seg::Key("keySecretRef"),
                    ];
                    self.secret_key_ref(c, &path, &eab.key_secret_ref);
                }
                self.acme(c, acme, spec);
            }
            if let Some(aws) = &is.aws_iot {
                self.aws_iot(c, aws);
            }
        }
    }

    fn aws_iot(&mut self, c: &ObjectRef, aws: &AwsIotIssuer) {
        let p = |f| {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("awsIot"),
                Seg::Key(f),
            ]
        };
        let name_chars = |s: &str, extra: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || extra.contains(ch))
        };
        for (field, v, extra) in [
            (
                "thingName",
                Some(&aws.thing_name).filter(|t| !t.is_empty()),
                ":_-",
            ),
            ("thingTypeName", aws.thing_type_name.as_ref(), ":_-"),
            ("thingGroupName", aws.thing_group_name.as_ref(), ":_-"),
            ("policyName", aws.policy_name.as_ref(), "_+=,.@-"),
        ] {
            let Some(v) = v else { continue };
            self.len(c, &p(field), v, 1, 128);
            if !v.is_empty() && !name_chars(v, extra) {
                self.err(
                    c,
                    &p(field),
                    format!(
                        "{field} `{v}` may only hold letters, digits and `{extra}`, as AWS IoT requires"
                    ),
                );
            }
        }
        if let Some(r) = &aws.region {
            if !name_chars(r, "-") {
                self.err(
                    c,
                    &p("region"),
                    format!("region `{r}` is not an AWS region such as `eu-west-1`"),
                );
            }
        }
        if let Some(u) = &aws.endpoint_url {
            self.http_url(c, &p("endpointUrl"), u);
        }
        if let Some(name) = &aws.credentials_secret_ref {
            let path = p("credentialsSecretRef");
            self.len(c, &path, name, 1, 253);
            if !self.is_broken(Kind::Secret, &c.namespace, name) {
                if self.res.secret(&c.namespace, name).is_none() {
                    self.err(
                        c,
                        &path,
                        format!("Secret `{name}` not found in namespace `{}`", c.namespace),
                    );
                } else {
                    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                        if self.res.secret_value(&c.namespace, name, key).is_none() {
                            self.err(c, &path, format!("Secret `{name}` has no key `{key}`"));
                        }
                    }
                }
            }
        }
        if let Some(e) = &aws.data_endpoint {
            let host = match e.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok_and(|p| p > 0) => h,
                _ => e.as_str(),
            };
            if host.is_empty() || host.contains(['/', ' ', ':']) {
                self.err(
                    c,
                    &p("dataEndpoint"),
                    format!("dataEndpoint `{e}` must be a host or host:port"),
                );
            }
        }
        for (field, r) in [
            ("storeInSecret", &aws.store_in_secret),
            ("importFrom", &aws.import_from),
        ] {
            if let Some(r) = r {
                let mut path = p(field).to_vec();
                path.push(Seg::Key("secretId"));
                self.len(c, &path, &r.secret_id, 1, 2048);
            }
        }
        if aws.import_from.is_some() && aws.key_origin == Some(KeyOrigin::Aws) {
            self.err(
                c,
                &p("keyOrigin"),
                "importFrom takes the key from the secret; do not set keyOrigin: AWS",
            );
        }
        match &aws.fleet_provisioning {
            Some(fp) => self.fleet_provisioning(c, aws, fp),
            None if aws.thing_name.is_empty() => self.err(
                c,
                &p("thingName"),
                "set thingName, or fleetProvisioning (its template names the thing)",
            ),
            None => {}
        }
    }

    /// `awsIot.fleetProvisioning`: what it needs (`dataEndpoint`, one claim, parameters
    /// with one source each) and the `awsIot` fields that do not apply to it.
    fn fleet_provisioning(&mut self, c: &ObjectRef, aws: &AwsIotIssuer, fp: &FleetProvisioning) {
        let base = [Seg::Key("spec"), Seg::Key("issuer"), Seg::Key("awsIot")];
        let at = |rest: &[Seg<'static>]| -> Vec<Seg<'static>> {
            base.iter()
                .copied()
                .chain(std::iter::once(Seg::Key("fleetProvisioning")))
                .chain(rest.iter().copied())
                .collect()
        };
        let field = |f: &'static str| -> Vec<Seg<'static>> {
            base.iter()
                .copied()
                .chain(std::iter::once(Seg::Key(f)))
                .collect()
        };
        if !aws.thing_name.is_empty() {
            self.err(
                c,
                &field("thingName"),
                "set thingName, or fleetProvisioning (its template names the thing), not both",
            );
        }
        if aws.data_endpoint.is_none() {
            self.err(
                c,
                &field("dataEndpoint"),
                "fleetProvisioning needs dataEndpoint, the account's iot:Data-ATS endpoint (`aws iot describe-endpoint --endpoint-type iot:Data-ATS`)",
            );
        }
        for (name, set) in [
            ("region", aws.region.is_some()),
            ("endpointUrl", aws.endpoint_url.is_some()),
            ("importFrom", aws.import_from.is_some()),
            ("storeInSecret", aws.store_in_secret.is_some()),
        ] {
            if set {
                self.err(
                    c,
                    &field(name),
                    format!("{name} does not apply with fleetProvisioning (no AWS API is called)"),
                );
            }
        }
        let t = &fp.template_name;
        self.len(c, &at(&[Seg::Key("templateName")]), t, 1, 36);
        if !t
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-".contains(ch))
        {
            self.err(
                c,
                &at(&[Seg::Key("templateName")]),
                format!("templateName `{t}` may only hold letters, digits, `_` and `-`, as AWS IoT requires"),
            );
        }
        match (&fp.claim.secret_ref, &fp.claim.certificate_ref) {
            (Some(s), None) => {
                self.tls_secret_ref(c, &at(&[Seg::Key("claim"), Seg::Key("secretRef")]), s)
            }
            (None, Some(name)) => {
                let path = at(&[Seg::Key("claim"), Seg::Key("certificateRef")]);
                if *name == c.name {
                    self.err(
                        c,
                        &path,
                        "the claim cannot be the Certificate it provisions",
                    );
                } else {
                    self.certificate_ref(c, &path, name);
                }
            }
            _ => self.err(
                c,
                &at(&[Seg::Key("claim")]),
                "set exactly one of secretRef and certificateRef",
            ),
        }
        if let Some(r) = &fp.ca_secret_ref {
            self.secret_key_ref(c, &at(&[Seg::Key("caSecretRef")]), r);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, prm) in fp.parameters.iter().enumerate() {
            let pp = |rest: &[Seg<'static>]| -> Vec<Seg<'static>> {
                let mut v = at(&[Seg::Key("parameters"), Seg::Index(i)]);
                v.extend_from_slice(rest);
                v
            };
            self.len(c, &pp(&[Seg::Key("name")]), &prm.name, 1, 128);
            if !seen.insert(prm.name.as_str()) {
                self.err(
                    c,
                    &pp(&[Seg::Key("name")]),
                    format!("parameter {} is given twice", prm.name),
                );
            }
            match (&prm.value, &prm.value_from) {
                (Some(_), None) => {}
                (None, Some(from)) => match (&from.hostname, &from.file) {
                    (Some(_), None) => {}
                    (None, Some(f)) => {
                        if !f.starts_with('/') {
                            self.err(
                                c,
                                &pp(&[Seg::Key("valueFrom"), Seg::Key("file")]),
                                format!("file `{f}` must be an absolute path"),
                            );
                        }
                    }
                    _ => self.err(
                        c,
                        &pp(&[Seg::Key("valueFrom")]),
                        "set exactly one of hostname and file",
                    ),
                },
                _ => self.err(c, &pp(&[]), "set exactly one of value and valueFrom"),
            }
        }
    }

    /// The settings and Secrets of the DNS-01 provider (`acme` checks that exactly one
    /// is set): what the CRD schema holds, for standalone mode, plus what a schema
    /// cannot see, such as a TSIG secret that is not base64.
    fn dns01_provider(&mut self, c: &ObjectRef, d: &Dns01Solver) {
        let dp = |rest: &[Seg<'static>]| -> Vec<Seg<'static>> {
            [
                Seg::Key("spec"),
                Seg::Key("issuer"),
                Seg::Key("acme"),
                Seg::Key("solver"),
                Seg::Key("dns01"),
            ]
            .into_iter()
            .chain(rest.iter().copied())
            .collect()
        };
        if let Some(p) = &d.rfc2136 {
            let r = |f: &'static str| dp(&[Seg::Key("rfc2136"), Seg::Key(f)]);
            if !nameserver_addr(&p.nameserver) {
                self.err(
                    c,
                    &r("nameserver"),
                    format!(
                        "nameserver `{}` is not host:port (for example 192.0.2.1:53)",
                        p.nameserver
                    ),
                );
            }
            if let Some(z) = &p.zone {
                if z.is_empty() || z.contains(char::is_whitespace) {
                    self.err(c, &r("zone"), format!("zone `{z}` is not a DNS name"));
                }
            }
            self.len(c, &r("tsigKeyName"), &p.tsig_key_name, 1, 253);
            self.secret_key_ref(c, &r("tsigSecretRef"), &p.tsig_secret_ref);
            let secret = &p.tsig_secret_ref;
            if let Some(v) = self
                .res
                .secret_value(&c.namespace, &secret.name, &secret.key)
            {
                use base64::Engine;
                let t = String::from_utf8_lossy(&v);
                let t = t.trim().trim_matches('"');
                let ok = !t.is_empty()
                    && (base64::engine::general_purpose::STANDARD.decode(t).is_ok()
                        || base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(t)
                            .is_ok());
                if !ok {
                    self.err(
                        c,
                        &r("tsigSecretRef"),
                        format!(
                            "Secret `{}` key `{}` is not base64; give the `secret` of the server's TSIG key file",
                            secret.name, secret.key
                        ),
                    );
                }
            }
        }
        if let Some(p) = &d.cloudflare {
            let r = |f: &'static str| dp(&[Seg::Key("cloudflare"), Seg::Key(f)]);
            self.secret_key_ref(c, &r("apiTokenSecretRef"), &p.api_token_secret_ref);
            if let Some(u) = &p.api_url {
                self.http_url(c, &r("apiUrl"), u);
            }
        }
        if let Some(p) = &d.route53 {
            let r = |f: &'static str| dp(&[Seg::Key("route53"), Seg::Key(f)]);
            match (&p.access_key_id_secret_ref, &p.secret_access_key_secret_ref) {
                (Some(id), Some(key)) => {
                    self.secret_key_ref(c, &r("accessKeyIdSecretRef"), id);
                    self.secret_key_ref(c, &r("secretAccessKeySecretRef"), key);
                }
                (None, None) => {}
                (Some(_), None) => self.err(
                    c,
                    &r("accessKeyIdSecretRef"),
                    "set secretAccessKeySecretRef too, or neither to use the AWS credential chain",
                ),
                (None, Some(_)) => self.err(
                    c,
                    &r("secretAccessKeySecretRef"),
                    "set accessKeyIdSecretRef too, or neither to use the AWS credential chain",
                ),
            }
            if let Some(u) = &p.endpoint_url {
                self.http_url(c, &r("endpointUrl"), u);
            }
        }
        if let Some(p) = &d.exec {
            let r = |f: &'static str| dp(&[Seg::Key("exec"), Seg::Key(f)]);
            if p.command.first().is_none_or(|c| c.is_empty()) {
                self.err(
                    c,
                    &r("command"),
                    "command must name a program (its arguments follow as list items)",
                );
            }
            if let Some(t) = p.timeout_seconds {
                self.range(c, &r("timeoutSeconds"), t.into(), 1, 3600);
            }
        }
        if let Some(p) = &d.propagation {
            let r = |f: &'static str| dp(&[Seg::Key("propagation"), Seg::Key(f)]);
            for (i, ns) in p.nameservers.iter().enumerate() {
                if !nameserver_addr(ns) {
                    let mut path = r("nameservers");
                    path.push(Seg::Index(i));
                    self.err(
                        c,
                        &path,
                        format!("nameserver `{ns}` is not host:port (for example 192.0.2.1:53)"),
                    );
                }
            }
            if let Some(t) = p.timeout_seconds {
                self.range(c, &r("timeoutSeconds"), t.into(), 1, 3600);
            }
        }
    }
}
