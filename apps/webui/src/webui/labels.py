"""Every string the UI shows, in Chinese (the default, as upstream) and English.

Messages with ``{fields}`` are filled in with :meth:`str.format` where they are shown.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from yuren_core.prompts import default_system_prompt

from .languages import LANGUAGES


@dataclass(frozen=True)
class Labels:
    """The UI text of one language."""

    lang: str
    title: str
    intro: str
    demo_banner: str
    model_line: str
    chatbot: str
    placeholder: str
    stop: str
    retry: str
    delete_last: str
    new_conversation: str
    system_prompt: str
    settings: str
    temperature: str
    temperature_info: str
    top_p: str
    top_p_info: str
    max_new_tokens: str
    repetition_penalty: str
    # Errors and notices.
    error_title: str
    empty_message: str
    text_too_long: str
    system_too_long: str
    too_many_images_message: str
    too_many_images_conversation: str
    images_not_supported: str
    image_too_large: str
    image_far_too_large: str
    image_unreadable: str
    image_format: str
    prompt_too_long: str
    out_of_memory: str
    generation_failed: str
    nothing_to_retry: str
    invalid_settings: str
    # Limits on abuse: unencodable text, thin images, dropped history, queue and request bounds.
    text_unencodable: str
    system_unencodable: str
    bad_input: str
    image_aspect: str
    turns_dropped: str
    stopped_before_start: str
    internal_error: str
    length_required: str
    bad_length: str
    body_too_large: str
    too_many_files: str
    login_wait: str
    session_queue_full: str
    address_queue_full: str
    host_refused: str
    origin_refused: str
    login_required: str
    bad_multipart: str
    upload_rate: str
    file_not_uploaded: str

    def default_system_prompt(self, today: datetime.date | None = None) -> str:
        """The default system prompt in this language, dated ``today`` (the current date if not given)."""
        return default_system_prompt(self.lang, today)


ZH = Labels(
    lang="zh",
    title="羽人 YuRen",
    intro="能看图的多模态对话模型。输入文字，或附上图片后提问；Shift+Enter 换行。",
    demo_banner=(
        "⚠️ **这是内置的小型演示模型**：参数极少，只用本项目自带的少量数据训练过，"
        "用来演示界面和流程：它能说出合成图片（`make-shapes-data`）里形状的颜色，其他回答没有实际意义。"
        "要使用真正的模型，请运行 `webui 模型目录或 Hub ID`。"
    ),
    model_line="当前模型：`{name}`",
    chatbot="对话",
    placeholder="输入消息，可附图片……",
    stop="停止",
    retry="重新生成",
    delete_last="删除上一轮",
    new_conversation="新对话",
    system_prompt="系统提示词（System Prompt）",
    settings="生成参数",
    temperature="温度（Temperature）",
    temperature_info="0 表示贪心解码（每次结果相同）",
    top_p="Top-p",
    top_p_info="只从累计概率达到 p 的候选词中采样",
    max_new_tokens="最大生成长度（token）",
    repetition_penalty="重复惩罚",
    error_title="出错了",
    empty_message="请输入消息或附上图片。",
    text_too_long="消息太长：{length} 个字符，上限是 {limit} 个。",
    system_too_long="系统提示词太长：{length} 个字符，上限是 {limit} 个。",
    too_many_images_message="一条消息最多附 {limit} 张图片。",
    too_many_images_conversation="这次对话的图片已达上限（{limit} 张），请开始新对话。",
    images_not_supported="当前模型只支持文字，不能读取图片。",
    image_too_large="图片 {name} 太大：{width}×{height} 像素，上限是 {limit:,} 像素。请缩小后再上传。",
    image_far_too_large="图片 {name} 太大，远超 {limit:,} 像素的上限。请缩小后再上传。",
    image_unreadable="无法读取图片 {name}：文件已损坏或不完整。",
    image_format="不支持图片 {name} 的格式（{format}），请上传 {accepted} 格式的图片。",
    prompt_too_long=(
        "这条消息太长：加上系统提示词共 {prompt_tokens} 个 token，再为回答预留 {max_new_tokens} 个，"
        "超出了模型 {context_length} 个 token 的上下文。请缩短消息、减少图片或调低最大生成长度。"
    ),
    out_of_memory="显存/内存不足，这次生成失败。请缩短对话、减少图片或调低最大生成长度后重试。",
    generation_failed="生成失败（{error}），请重试。",
    nothing_to_retry="还没有可以重新生成的回答。",
    invalid_settings="生成参数无效：{detail}",
    text_unencodable="消息里有无法编码的字符（例如单独的代理项 U+D800），请删除后重新发送。",
    system_unencodable="系统提示词里有无法编码的字符（例如单独的代理项 U+D800），请删除后重试。",
    bad_input="请求格式不对：{detail}",
    image_aspect="图片 {name} 是 {width}×{height} 像素：长边超过短边的 {limit} 倍，太细长了，模型看不清。请裁剪后再上传。",
    turns_dropped="（最早的 {count} 轮对话已从本次对话中移除：它们已超出模型 {context_length} 个 token 的上下文，模型再也看不到。）",
    stopped_before_start="已停止：这个请求还在排队，没有开始生成。",
    internal_error="服务器出错了（{error}），请重试。",
    length_required="请求必须带 Content-Length 头。",
    bad_length="Content-Length 头无效。",
    body_too_large="请求太大：上限是 {limit}。",
    too_many_files="一次上传的文件太多：最多 {limit} 个。",
    login_wait="登录失败次数太多，请 {seconds} 秒后再试。",
    session_queue_full="这个对话已经有请求在排队（{limit} 个），请等它完成或点“停止”。",
    address_queue_full="来自你的地址的排队请求已达上限（{limit} 个），请等它们完成。",
    host_refused="这个服务器不以 {host} 这个名字提供服务；若它确实是本服务器的名字，请用 --allowed_host {host} 启动。",
    origin_refused="拒绝来自其他网页（{origin}）的请求。",
    login_required="请先登录。",
    bad_multipart="上传请求的 Content-Type 必须是 multipart/form-data，且恰好带一个 boundary 参数。",
    upload_rate="上传太多太快：每分钟最多 {limit}，请 {seconds} 秒后再试。",
    file_not_uploaded="文件 {name} 没有上传到这个服务器：请先上传再发送。",
)

EN = Labels(
    lang="en",
    title="YuRen 羽人",
    intro="A multimodal chat model that reads images. Type a message, or attach images and ask about them; Shift+Enter for a new line.",
    demo_banner=(
        "⚠️ **This is the small built-in demo model**: a tiny network trained only on this project's small "
        "sample data, there to demonstrate the interface and the pipeline: it names the colour of the shape in a "
        "synthetic image (`make-shapes-data`); its other answers mean nothing. "
        "To chat with a real model run `webui MODEL_DIR_OR_HUB_ID`."
    ),
    model_line="Model: `{name}`",
    chatbot="Chat",
    placeholder="Type a message, attach images…",
    stop="Stop",
    retry="Retry",
    delete_last="Delete last turn",
    new_conversation="New conversation",
    system_prompt="System prompt",
    settings="Generation settings",
    temperature="Temperature",
    temperature_info="0 means greedy decoding (same answer every time)",
    top_p="Top-p",
    top_p_info="sample only from the most likely tokens that together reach probability p",
    max_new_tokens="Max new tokens",
    repetition_penalty="Repetition penalty",
    error_title="Error",
    empty_message="Type a message or attach an image.",
    text_too_long="The message is too long: {length} characters, the limit is {limit}.",
    system_too_long="The system prompt is too long: {length} characters, the limit is {limit}.",
    too_many_images_message="Attach at most {limit} images to one message.",
    too_many_images_conversation="This conversation has reached its limit of {limit} images; start a new conversation.",
    images_not_supported="The loaded model reads text only; it cannot take images.",
    image_too_large="The image {name} is too large: {width}×{height} pixels, the limit is {limit:,} pixels. Downscale it first.",
    image_far_too_large="The image {name} is too large, far beyond the limit of {limit:,} pixels. Downscale it first.",
    image_unreadable="Could not read the image {name}: the file is damaged or incomplete.",
    image_format="The image {name} is in an unsupported format ({format}); upload {accepted}.",
    prompt_too_long=(
        "This message is too long: with the system prompt it takes {prompt_tokens} tokens, and with "
        "{max_new_tokens} tokens kept for the answer that exceeds the model's context of {context_length} tokens. "
        "Shorten the message, attach fewer images or lower the max new tokens."
    ),
    out_of_memory="Out of memory: this answer failed. Shorten the conversation, attach fewer images or lower the max new tokens, then retry.",
    generation_failed="Generation failed ({error}); please retry.",
    nothing_to_retry="There is no answer to retry yet.",
    invalid_settings="Invalid generation settings: {detail}",
    text_unencodable="The message contains characters that cannot be encoded (such as a lone surrogate, U+D800); remove them and send it again.",
    system_unencodable="The system prompt contains characters that cannot be encoded (such as a lone surrogate, U+D800); remove them and try again.",
    bad_input="Malformed request: {detail}",
    image_aspect="The image {name} is {width}×{height} pixels: one side is more than {limit} times the other, too thin for the model to see anything. Crop it and upload it again.",
    turns_dropped="(The {count} earliest turns were removed from this conversation: they no longer fit the model's context of {context_length} tokens, so the model can no longer see them.)",
    stopped_before_start="Stopped: this request was still waiting in the queue and never started.",
    internal_error="Something went wrong on the server ({error}); please try again.",
    length_required="The request must carry a Content-Length header.",
    bad_length="The Content-Length header is not valid.",
    body_too_large="The request is too large: the limit is {limit}.",
    too_many_files="Too many files in one upload: at most {limit}.",
    login_wait="Too many failed logins; try again in {seconds} s.",
    session_queue_full="This conversation already has {limit} request(s) waiting; wait for it or press Stop.",
    address_queue_full="Your address already has {limit} requests waiting; wait for them to finish.",
    host_refused="This server does not answer to the name {host}; if it is this server's name, start it with --allowed_host {host}.",
    origin_refused="Requests from another web page ({origin}) are refused.",
    login_required="Log in first.",
    bad_multipart="An upload's Content-Type must be multipart/form-data with exactly one boundary parameter.",
    upload_rate="Uploading too much too fast: at most {limit} per minute; try again in {seconds} s.",
    file_not_uploaded="The file {name} was not uploaded to this server: upload it first, then send it.",
)

LABELS = {"zh": ZH, "en": EN}


def labels_for(lang: str) -> Labels:
    """The labels of ``lang`` (``zh`` or ``en``)."""
    if lang not in LABELS:
        raise ValueError(f"unsupported UI language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    return LABELS[lang]
