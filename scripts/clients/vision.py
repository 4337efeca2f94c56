#!/usr/bin/env python3
"""The recipe's listing 11.2 with today's openai SDK: ask about a picture. The appliance must serve a vision
model (one with a projector, e.g. `llmpi-prepare run` of a LLaVA or Gemma 3 repo); it caps the image's cost
server-side, so the picture is sent as it is.

  OPENAI_BASE_URL=http://<pi>:8080/v1 OPENAI_API_KEY=<key> python3 scripts/clients/vision.py photo.jpg "What is this?"
"""

from __future__ import annotations

import base64
import mimetypes
import sys
from pathlib import Path

import openai
from common import arguments, client, fail, pick_model


def main() -> None:
    p = arguments(__doc__ or "")
    p.add_argument("image", type=Path)
    p.add_argument("question", nargs="?", default="Describe this image.")
    p.add_argument("--max-tokens", type=int, default=256)
    args = p.parse_args()
    if not args.image.is_file():
        sys.exit(f"no such image: {args.image}")
    mime = mimetypes.guess_type(args.image.name)[0] or "image/jpeg"
    url = f"data:{mime};base64," + base64.b64encode(args.image.read_bytes()).decode()
    c = client(args)
    try:
        model = pick_model(c, args.model, embedding=False)
        reply = c.chat.completions.create(
            model=model,
            max_tokens=args.max_tokens,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": args.question},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        )
    except openai.APIError as e:
        fail(e)
    print(reply.choices[0].message.content or "")
    if reply.usage is not None:
        print(f"[{model}: {reply.usage.prompt_tokens} prompt tokens with the image]", file=sys.stderr)


if __name__ == "__main__":
    main()
