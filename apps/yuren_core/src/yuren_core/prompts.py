"""The default system prompt: what the web UI starts a conversation with.

It lives here, not in the web UI, because training data uses it too: a model
only follows a system prompt the way it saw it in training (the demo model's
shapes data carries it on part of its conversations for that reason).
"""

from __future__ import annotations

import datetime

SYSTEM_PROMPT_TEMPLATES = {
    "zh": (
        "你是羽人（YuRen），一个能看懂图片的多模态人工智能助手。请认真理解用户的问题和图片，"
        "给出准确、有条理、有帮助的回答；不确定时如实说明，不要编造。需要时使用 Markdown 排版，"
        "代码放在代码块中。拒绝违法、有害的请求。当前日期：{date}。"
    ),
    "en": (
        "You are YuRen (羽人), a helpful multimodal AI assistant that can understand images. Read the user's "
        "question and images carefully and answer accurately, clearly and helpfully; when you are not sure, "
        "say so instead of making things up. Use Markdown where it helps and put code in code blocks. "
        "Decline illegal or harmful requests. Current date: {date}."
    ),
}


def default_system_prompt(lang: str = "zh", today: datetime.date | None = None) -> str:
    """The default system prompt in ``lang`` (``zh`` or ``en``), dated ``today`` (default: the current date)."""
    return SYSTEM_PROMPT_TEMPLATES[lang].format(date=(today or datetime.date.today()).isoformat())
