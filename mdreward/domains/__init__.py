"""Built-in domains. Each module exposes a ``spec`` (a DomainSpec) registered through the
``mdreward.domains`` entry-point group, exactly like a third-party plugin."""
