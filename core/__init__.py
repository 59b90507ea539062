"""Project-wide plumbing shared by the apps: the error types every door maps the same way,
the API's error shape, pagination and permissions, and the database-outage middleware.
Imports no app code."""
