"""The runtime: driving a saga through its steps and compensations."""
