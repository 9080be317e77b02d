"""Greedy generations from vLLM, run with serving/yuren_vllm's Python: ``python vllm_generate.py MODEL JOB OUT``.

JOB is JSON: ``max_new_tokens``, ``stop_token_ids``, ``prompts``, a list of
``{"prompt_token_ids": [...], "images": [png paths]}``, ``chats``, a list of
OpenAI-style message lists answered through the chat template, and
``allowed_media_domains`` (vLLM's setting of that name). OUT receives
``{"prompts": [...], "chats": [...]}``: the generated token ids of each, in order.
"""

import json
import sys


def main() -> None:
    from PIL import Image
    from vllm import LLM, SamplingParams

    model, job_file, out_file = sys.argv[1:4]
    with open(job_file) as f:
        job = json.load(f)
    llm = LLM(
        model=model,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        max_num_seqs=len(job["prompts"]),
        limit_mm_per_prompt={"image": 2},
        allowed_media_domains=job["allowed_media_domains"],
    )
    prompts = []
    for request in job["prompts"]:
        prompt = {"prompt_token_ids": request["prompt_token_ids"]}
        if request["images"]:
            prompt["multi_modal_data"] = {"image": [Image.open(path).convert("RGB") for path in request["images"]]}
        prompts.append(prompt)
    params = SamplingParams(temperature=0, max_tokens=job["max_new_tokens"], stop_token_ids=job["stop_token_ids"])
    outputs = llm.generate(prompts, params)
    chats = llm.chat(job["chats"], params) if job["chats"] else []
    with open(out_file, "w") as f:
        json.dump(
            {
                key: [list(output.outputs[0].token_ids) for output in done]
                for key, done in (("prompts", outputs), ("chats", chats))
            },
            f,
        )


# vLLM may start worker processes that re-import this file.
if __name__ == "__main__":
    main()
