//! Email templates: `templates/<name>/{subject.txt, body.txt, body.html}`, built in and
//! optionally overridden from a folder, rendered with minijinja. `.html` templates escape every
//! value; text templates do not (they are never read as markup). Undefined names are errors, so
//! a template typo fails the render instead of sending a blank.

use std::path::Path;

use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;

use crate::NotifyError;
use crate::locale::Catalog;

/// The templates tierwise sends, and the parts of each.
pub const MESSAGES: [&str; 4] = ["digest", "admin_digest", "reminders", "churn_alert"];
const PARTS: [&str; 3] = ["subject.txt", "body.txt", "body.html"];

/// Built-in templates, by path.
const BUILTIN: &[(&str, &str)] = &[
    ("_layout.html", include_str!("../templates/_layout.html")),
    ("_macros.html", include_str!("../templates/_macros.html")),
    (
        "digest/subject.txt",
        include_str!("../templates/digest/subject.txt"),
    ),
    (
        "digest/body.txt",
        include_str!("../templates/digest/body.txt"),
    ),
    (
        "digest/body.html",
        include_str!("../templates/digest/body.html"),
    ),
    (
        "admin_digest/subject.txt",
        include_str!("../templates/admin_digest/subject.txt"),
    ),
    (
        "admin_digest/body.txt",
        include_str!("../templates/admin_digest/body.txt"),
    ),
    (
        "admin_digest/body.html",
        include_str!("../templates/admin_digest/body.html"),
    ),
    (
        "reminders/subject.txt",
        include_str!("../templates/reminders/subject.txt"),
    ),
    (
        "reminders/body.txt",
        include_str!("../templates/reminders/body.txt"),
    ),
    (
        "reminders/body.html",
        include_str!("../templates/reminders/body.html"),
    ),
    (
        "churn_alert/subject.txt",
        include_str!("../templates/churn_alert/subject.txt"),
    ),
    (
        "churn_alert/body.txt",
        include_str!("../templates/churn_alert/body.txt"),
    ),
    (
        "churn_alert/body.html",
        include_str!("../templates/churn_alert/body.html"),
    ),
];

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part.
    pub html: String,
}

/// The loaded templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The built-in templates, each replaced by `<dir>/<path>` when `dir` is given and has it.
    pub fn load(dir: Option<&Path>) -> Result<Self, NotifyError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (path, builtin) in BUILTIN {
            let source = match dir.map(|d| d.join(path)).filter(|p| p.is_file()) {
                Some(file) => {
                    std::fs::read_to_string(&file).map_err(|e| NotifyError::Template {
                        template: file.display().to_string(),
                        reason: e.to_string(),
                    })?
                }
                None => (*builtin).to_owned(),
            };
            env.add_template_owned(*path, source)
                .map_err(|e| NotifyError::Template {
                    template: (*path).to_owned(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Self { env })
    }

    /// Renders message `name` with the catalog as `t` and `view` as `v`.
    pub fn render(
        &self,
        name: &str,
        catalog: &Catalog,
        view: &impl Serialize,
    ) -> Result<Rendered, NotifyError> {
        let ctx = context! { t => Serde(catalog.tree()), v => Serde(view) };
        let part = |part: &str| -> Result<String, NotifyError> {
            let path = format!("{name}/{part}");
            let template = self
                .env
                .get_template(&path)
                .map_err(|e| NotifyError::Template {
                    template: path.clone(),
                    reason: e.to_string(),
                })?;
            template.render(&ctx).map_err(|e| NotifyError::Template {
                template: path.clone(),
                reason: format!("{e:#}"),
            })
        };
        let [subject, text, html] = PARTS;
        Ok(Rendered {
            // One line, whatever the template or the data hold.
            subject: part(subject)?
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            text: part(text)?,
            html: part(html)?,
        })
    }
}
