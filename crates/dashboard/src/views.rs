//! Page templates (minijinja, HTML auto-escaped, built into the binary) and the UI's words in
//! `zh-CN` and `en` (`templates/locales/<locale>.toml`).

use actix_web::HttpResponse;
use minijinja::Value;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("overview.html", include_str!("../templates/overview.html")),
    (
        "customers.html",
        include_str!("../templates/customers.html"),
    ),
    ("customer.html", include_str!("../templates/customer.html")),
    ("message.html", include_str!("../templates/message.html")),
    (
        "migrations.html",
        include_str!("../templates/migrations.html"),
    ),
    ("imports.html", include_str!("../templates/imports.html")),
    ("rejects.html", include_str!("../templates/rejects.html")),
    ("jobs.html", include_str!("../templates/jobs.html")),
    ("outbox.html", include_str!("../templates/outbox.html")),
    ("policy.html", include_str!("../templates/policy.html")),
    ("apidocs.html", include_str!("../templates/apidocs.html")),
];

const LOCALES: &[(&str, &str)] = &[
    ("en", include_str!("../templates/locales/en.toml")),
    ("zh-CN", include_str!("../templates/locales/zh-CN.toml")),
];

/// The loaded templates and catalogs.
#[derive(Debug)]
pub struct Views {
    env: Environment<'static>,
    /// The catalogs as template values, converted once: converting one per page cost more
    /// than rendering the page.
    words: Vec<(String, minijinja::Value)>,
}

/// `1234567` → `1,234,567`.
fn num(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    if n < 0 {
        out.push('-');
    }
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Minor units → major with two decimals and grouping: `123450` → `1,234.50`.
fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", num((abs / 100) as f64), abs % 100)
}

impl Views {
    /// Loads everything built in.
    pub fn load() -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| format!("template {name}: {e}"))?;
        }
        env.add_filter("num", num);
        env.add_filter("money", money);
        env.add_filter("pct", |v: f64| format!("{:.1}%", v * 100.0));
        env.add_filter("score", |v: f64| format!("{v:.1}"));
        // ` selected` on the option whose value is the current one (a filter, not a template
        // macro: a page has dozens of options, and macro calls were a tenth of its rendering).
        env.add_filter("selected", |current: Value, option: Value| {
            if !current.is_none()
                && !current.is_undefined()
                && current.to_string() == option.to_string()
            {
                Value::from_safe_string(" selected".to_owned())
            } else {
                Value::from("")
            }
        });
        env.add_filter("urlencode", |v: String| crate::auth::url_encode(&v, false));
        let words = catalogs()?
            .into_iter()
            .map(|(name, table)| (name, minijinja::Value::from(Serde(table))))
            .collect();
        Ok(Self { env, words })
    }

    fn words(&self, locale: &str) -> minijinja::Value {
        self.words
            .iter()
            .find(|(name, _)| name == locale)
            .or_else(|| self.words.first())
            .map(|(_, words)| words.clone())
            .unwrap_or_default()
    }

    /// Renders `template` with the locale's words as `t` and `view` as `v`.
    pub fn render(&self, template: &str, locale: &str, view: &impl Serialize) -> HttpResponse {
        let ctx = context! { t => self.words(locale), v => Serde(view), locale => locale };
        match self.env.get_template(template).and_then(|t| t.render(&ctx)) {
            Ok(html) => HttpResponse::Ok()
                .content_type("text/html; charset=utf-8")
                .body(html),
            Err(e) => {
                tracing::error!(template, error = %format!("{e:#}"), "rendering a page failed");
                HttpResponse::InternalServerError().body("The page could not be rendered.")
            }
        }
    }
}

/// The built-in word catalogs by locale.
fn catalogs() -> Result<Vec<(String, toml::Table)>, String> {
    LOCALES
        .iter()
        .map(|(name, text)| {
            toml::from_str::<toml::Table>(text)
                .map(|t| ((*name).to_owned(), t))
                .map_err(|e| format!("locale {name}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_grouped() {
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(money(123450), "1,234.50");
        assert_eq!(money(-5), "-0.05");
    }

    #[test]
    fn both_locales_have_the_same_keys() {
        let catalogs = catalogs().unwrap();
        fn keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                let key = format!("{prefix}{k}");
                match v {
                    toml::Value::Table(inner) => keys(&format!("{key}."), inner, out),
                    _ => out.push(key),
                }
            }
        }
        let (mut en, mut zh) = (Vec::new(), Vec::new());
        keys("", &catalogs[0].1, &mut en);
        keys("", &catalogs[1].1, &mut zh);
        assert_eq!(
            (catalogs[0].0.as_str(), catalogs[1].0.as_str()),
            ("en", "zh-CN")
        );
        assert_eq!(en, zh);
    }
}
