"""A web app behind a function URL: FastAPI behind Mangum, written as Mangum's README shows and installed through
requirements.txt, owns its host as on AWS: its redirects stay on the function URL, its /docs load its own schema."""

from __future__ import annotations

import textwrap
from typing import Iterator

import httpx
import pytest

from .helpers import Gateway, fresh_redis_url, gateway_with_function

# Mangum's README example (FastAPI), with a collection route at "/items/" and a JSON body as FastAPI's tutorial
# writes them.
APP = textwrap.dedent('''
    from fastapi import FastAPI
    from mangum import Mangum
    from pydantic import BaseModel

    app = FastAPI(title="Shop")


    class Item(BaseModel):
        name: str
        price: float


    @app.get("/")
    def read_root():
        return {"Hello": "World"}


    @app.get("/items/")
    def list_items():
        return [{"name": "hammer", "price": 9.5}]


    @app.post("/items/")
    def create_item(item: Item):
        return {"created": item}


    @app.get("/items/{item_id}")
    def read_item(item_id: int, q: str = None):
        return {"item_id": item_id, "q": q}

    handler = Mangum(app, lifespan="off")
    ''')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    yield from gateway_with_function(tmp_path_factory.mktemp("asgi"), fresh_redis_url(redis_base_url), "shop", {
        "handler.py": APP, "function.yaml": "timeout: 10\nevents:\n  - http: {}\n",
        "requirements.txt": "fastapi==0.165.0\nmangum==0.22.0\n"})


@pytest.fixture(scope="module")
def host(gateway: Gateway) -> str:
    return f"shop.lambda-url.localhost:{gateway.url.rsplit(':', 1)[1]}"


@pytest.fixture(scope="module")
def shop(gateway: Gateway, host: str) -> Iterator[httpx.Client]:
    """The app's function URL, http://shop.lambda-url.localhost:PORT/, as a browser reaches it."""
    with gateway.client(anonymous=True, headers={"Host": host}) as client:
        yield client


def test_the_apps_root_answers_on_its_function_url(shop: httpx.Client) -> None:
    response = shop.get("/")
    assert response.status_code == 200, response.text
    assert response.json() == {"Hello": "World"}


def test_a_redirect_stays_on_the_function_urls_host_and_scheme(shop: httpx.Client, host: str) -> None:
    # given FastAPI's route /items/, when /items is requested (redirect_slashes)
    response = shop.get("/items")
    # then the app redirects to /items/ on its own function URL, over http as the caller came
    assert response.status_code == 307, response.text
    assert response.headers["location"] == f"http://{host}/items/"
    assert shop.get(response.headers["location"].removeprefix(f"http://{host}")).json()[0]["name"] == "hammer"


def test_the_apps_docs_load_its_own_openapi_schema(shop: httpx.Client) -> None:
    # given the app's /docs page on its function URL
    page = shop.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # then it points at /openapi.json, which on this host is the app's schema, not Lambent's
    assert "url: '/openapi.json'" in page.text
    schema = shop.get("/openapi.json").json()
    assert schema["info"]["title"] == "Shop"
    assert set(schema["paths"]) == {"/", "/items/", "/items/{item_id}"}


def test_path_parameters_and_query_strings_reach_the_app(shop: httpx.Client) -> None:
    response = shop.get("/items/3", params={"q": "hello world"})
    assert response.status_code == 200, response.text
    assert response.json() == {"item_id": 3, "q": "hello world"}


def test_a_json_body_reaches_the_app_and_its_validation_errors_come_back(shop: httpx.Client) -> None:
    created = shop.post("/items/", json={"name": "saw", "price": 12.25})
    assert created.status_code == 200, created.text
    assert created.json() == {"created": {"name": "saw", "price": 12.25}}
    invalid = shop.post("/items/", json={"name": "saw"})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "price"]


def test_on_the_fn_fallback_links_point_at_the_root_of_the_gateways_host(gateway: Gateway) -> None:
    # given the same app reached at /fn/shop on the gateway's own host (the fallback, as README says)
    with gateway.client(anonymous=True) as client:
        response = client.get("/fn/shop/items")
    # then its redirect loses the /fn/shop prefix: that is what the function URL's own host avoids
    assert response.status_code == 307
    assert response.headers["location"] == f"{gateway.url}/items/"
