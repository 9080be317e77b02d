"""Ask a served model about an image with the official ``openai`` client (run with serving/yuren_vllm's Python).

``python openai_chat.py BASE_URL IMAGE MAX_TOKENS OUT``: OUT receives the model id
/v1/models lists, the streamed pieces, and the same request answered unstreamed.
"""

import base64
import json
import sys

from openai import OpenAI


def main() -> None:
    base_url, image, max_tokens, out = sys.argv[1:5]
    client = OpenAI(base_url=base_url, api_key="none")
    model = client.models.list().data[0].id
    with open(image, "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "\nWhat is in the picture?"},
            ],
        }
    ]
    settings = {"model": model, "messages": messages, "temperature": 0, "max_tokens": int(max_tokens)}
    stream = client.chat.completions.create(stream=True, **settings)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    whole = client.chat.completions.create(**settings).choices[0].message.content
    with open(out, "w") as f:
        json.dump({"model": model, "pieces": pieces, "whole": whole}, f)


if __name__ == "__main__":
    main()
