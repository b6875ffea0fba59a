"""The outside of the service: routes, request bodies, errors, OpenAPI, app assembly."""
