"""The API's routes, as the template must declare them (tests/unit/test_template.py, test_privacy.py)."""

API_ROUTES = {
    ("POST", "/anonymize"),
    ("GET", "/openapi.json"),
    ("POST", "/uploads"),
    ("GET", "/results/{id}"),
    ("GET", "/"),
    ("GET", "/options"),
}
KEYLESS_ROUTES = {("GET", "/"), ("GET", "/options")}  # the web page and its form: no image, no data
