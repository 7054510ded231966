"""redact_uri / redact_text: credentials hidden, everything else kept byte for byte."""

import pytest


@pytest.mark.parametrize("uri, shown", [
    ("sqlite:////home/me/project/mlruns.db", "sqlite:////home/me/project/mlruns.db"),
    ("https://token@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
    ("https://bucket.s3.amazonaws.com/a.zip?X-Amz-Credential=AK%2F1&X-Amz-Signature=f00&v=2",
     "https://bucket.s3.amazonaws.com/a.zip?X-Amz-Credential=***&X-Amz-Signature=***&v=2"),
    ("http://host/path?api_key=k#part", "http://host/path?api_key=***#part"),
    ("databricks://profile", "databricks://profile"),
])
def test_redact_uri_hides_only_credentials(uri, shown):
    from diffusionret.redact import redact_text, redact_uri

    assert redact_uri(uri) == shown
    assert redact_text(f"could not reach {uri}, retrying") == f"could not reach {shown}, retrying"
