//! A customer: registered once with a name and an email address.

use serde::{Deserialize, Serialize};
use strata::{Aggregate, Decision, Rejection, RejectionKind};

use super::json_events;

/// A registered customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Customer {
    /// Whether the customer exists.
    pub registered: bool,
}

/// What can be asked of a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCommand {
    /// Registers a new customer.
    Register {
        /// Display name, not empty.
        name: String,
        /// Email address, containing `@`.
        email: String,
    },
}

/// A new customer was registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
}

/// What happened to a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerEvent {
    /// See [`CustomerRegistered`].
    CustomerRegistered(CustomerRegistered),
}
json_events!(CustomerEvent { CustomerRegistered });

/// Why a customer command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    /// The id is taken.
    #[error("customer already exists")]
    AlreadyExists,
    /// The name is empty.
    #[error("name must not be empty")]
    EmptyName,
    /// The email has no `@`.
    #[error("email must contain '@'")]
    InvalidEmail,
}

impl Rejection for CustomerError {
    fn kind(&self) -> RejectionKind {
        match self {
            CustomerError::AlreadyExists => RejectionKind::Conflict,
            CustomerError::EmptyName | CustomerError::InvalidEmail => RejectionKind::BrokenRule,
        }
    }
}

impl Aggregate for Customer {
    const TYPE: &'static str = "customer";
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;

    fn command_name(command: &CustomerCommand) -> &'static str {
        match command {
            CustomerCommand::Register { .. } => "Register",
        }
    }

    fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::CustomerRegistered(_) => self.registered = true,
        }
    }

    fn handle(d: &mut Decision<'_, Self>, command: CustomerCommand) -> Result<(), CustomerError> {
        match command {
            CustomerCommand::Register { name, email } => {
                if d.registered {
                    return Err(CustomerError::AlreadyExists);
                }
                if name.trim().is_empty() {
                    return Err(CustomerError::EmptyName);
                }
                if !email.contains('@') {
                    return Err(CustomerError::InvalidEmail);
                }
                d.emit(CustomerEvent::CustomerRegistered(CustomerRegistered { name, email }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use strata::testing::given;

    use super::*;

    fn register(name: &str, email: &str) -> CustomerCommand {
        CustomerCommand::Register { name: name.into(), email: email.into() }
    }

    fn registered() -> CustomerEvent {
        CustomerEvent::CustomerRegistered(CustomerRegistered {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        })
    }

    #[test]
    fn a_new_customer_registers() {
        given::<Customer>([]).when(register("Ada", "ada@example.com")).then([registered()]);
    }

    #[test]
    fn a_customer_registers_once() {
        given::<Customer>([registered()])
            .when(register("Ada", "ada@example.com"))
            .then_error(CustomerError::AlreadyExists);
    }

    #[test]
    fn a_name_is_required() {
        given::<Customer>([]).when(register("  ", "a@b")).then_error(CustomerError::EmptyName);
    }

    #[test]
    fn an_email_needs_an_at_sign() {
        given::<Customer>([]).when(register("Ada", "ada")).then_error(CustomerError::InvalidEmail);
    }
}
