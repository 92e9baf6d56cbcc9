//! The actions a grant asks Cedar about, and values kept per action.

use std::ops::Index;

/// An action of the lake schema that the gateway asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Action {
    /// May the table be queried at all (scenario scope).
    Query,
    /// May a column be read raw.
    ReadColumn,
    /// May a column be read masked (its `@mask`).
    ReadMasked,
    /// May a column be aggregated only (its `@min_group`, `@epsilon`).
    Aggregate,
    /// Which rows may be read (partially evaluated with the row unknown).
    ReadRow,
    /// May a data product be called (`Lake::Product` resources, `policy-model.md` §7).
    Invoke,
}

impl Action {
    /// Every action, in the order [`PerAction`] keeps them.
    pub(super) const ALL: [Action; 6] = [
        Action::Query,
        Action::ReadColumn,
        Action::ReadMasked,
        Action::Aggregate,
        Action::ReadRow,
        Action::Invoke,
    ];

    /// The action's id in the schema (`Lake::Action::"…"`).
    pub(super) fn name(self) -> &'static str {
        match self {
            Action::Query => "query",
            Action::ReadColumn => "read_column",
            Action::ReadMasked => "read_masked",
            Action::Aggregate => "aggregate",
            Action::ReadRow => "read_row",
            Action::Invoke => "invoke",
        }
    }
}

/// One value for each [`Action`].
#[derive(Debug, Clone)]
pub(super) struct PerAction<T>([T; 6]);

impl<T> PerAction<T> {
    /// The value of each action, made by `f`.
    pub(super) fn new(f: impl FnMut(Action) -> T) -> Self {
        Self(Action::ALL.map(f))
    }

    /// Each action's value, made by `f`, or its first error.
    pub(super) fn try_new<E>(mut f: impl FnMut(Action) -> Result<T, E>) -> Result<Self, E> {
        let mut values = Vec::with_capacity(Action::ALL.len());
        for a in Action::ALL {
            values.push(f(a)?);
        }
        Ok(Self(
            values
                .try_into()
                .unwrap_or_else(|_| unreachable!("one value per action")),
        ))
    }
}

impl<T> Index<Action> for PerAction<T> {
    type Output = T;

    fn index(&self, action: Action) -> &T {
        &self.0[action as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_by_action_in_schema_order() {
        let names = PerAction::new(Action::name);
        assert_eq!(names[Action::ReadMasked], "read_masked");
        assert_eq!(
            names.0,
            [
                "query",
                "read_column",
                "read_masked",
                "aggregate",
                "read_row",
                "invoke"
            ]
        );
        let failed: Result<PerAction<u8>, &str> = PerAction::try_new(|a| {
            if a == Action::Aggregate {
                Err("no")
            } else {
                Ok(1)
            }
        });
        assert_eq!(failed.unwrap_err(), "no");
    }
}
