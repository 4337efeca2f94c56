"""Images sent to the appliance: a model without a projector answers with a clear 4xx (the recipe's "mmproj
missing" moment), not the 500 that an unpatched llama-server b11312 gives (fixed in build/patches/0002)."""

from __future__ import annotations

import openai
import pytest

from tests.compose_helpers import Project
from tests.media import data_url, image_message, png

pytestmark = pytest.mark.vision


@pytest.mark.contract
def test_image_to_a_text_only_model_is_400_with_the_hint(appliance: Project, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{appliance.url}/v1", api_key=api_key, max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-4-vision-preview", max_tokens=4, messages=image_message(data_url(png(32, 32)), "What is this?")
        )
    assert e.value.status_code == 400
    assert "image input is not supported" in str(e.value) and "mmproj" in str(e.value)
    assert appliance.health() == 200
