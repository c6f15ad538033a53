//! The first difference between two resolved stage configs (`config.toml`), in words: which key,
//! with both values, so that "the stage config changed" can say what changed.

/// The first key (dotted, in sorted order) whose value differs between `old` and `new`, as
/// ``"`max_steps` = 400 before, 6 now"``; `None` when both parse and are equal, or either does
/// not parse. Integers and floats of equal value are equal.
pub fn first_difference(old: &str, new: &str) -> Option<String> {
    let old: toml::Table = toml::from_str(old).ok()?;
    let new: toml::Table = toml::from_str(new).ok()?;
    table_difference(&old, &new, &mut Vec::new())
}

fn table_difference(
    old: &toml::Table,
    new: &toml::Table,
    path: &mut Vec<String>,
) -> Option<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        path.push(k.clone());
        let found = match (old.get(k), new.get(k)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                table_difference(a, b, path)
            }
            (Some(a), Some(b)) if same_value(a, b) => None,
            (a, b) => Some(format!(
                "`{}` = {} before, {} now",
                path.join("."),
                shown(a),
                shown(b)
            )),
        };
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

fn shown(v: Option<&toml::Value>) -> String {
    v.map_or_else(|| "unset".into(), ToString::to_string)
}

fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    use toml::Value as V;
    match (a, b) {
        (V::Integer(x), V::Float(y)) | (V::Float(y), V::Integer(x)) => (*x as f64) == *y,
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (V::Table(x), V::Table(y)) => table_difference(x, y, &mut Vec::new()).is_none(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_with_both_values() {
        let old = "max_steps = 400\nbatch_size = 8\n[network]\npreset = 'smoke'\n";
        assert_eq!(first_difference(old, old), None);
        assert_eq!(
            first_difference(
                old,
                "max_steps = 6\nbatch_size = 8\n[network]\npreset = 'smoke'\n"
            )
            .as_deref(),
            Some("`max_steps` = 400 before, 6 now")
        );
        assert_eq!(
            first_difference(
                old,
                "max_steps = 400\nbatch_size = 8\n[network]\npreset = 'x'\n"
            )
            .as_deref(),
            Some("`network.preset` = \"smoke\" before, \"x\" now")
        );
        assert_eq!(
            first_difference("a = 1\n", "a = 1.0\nb = [1]\n").as_deref(),
            Some("`b` = unset before, [1] now")
        );
        assert_eq!(first_difference("not toml [", "a = 1"), None);
    }
}
