"""``corpora seed``: a realistic synthetic catalogue for demonstrations and benchmarks, inserted in bulk.

Products get mixed Chinese and English titles, summaries and descriptions across every industry and
modality, one to two languages, an access mode, and one published version (1.0.0) with a licence and
provenance. The versions carry no files: seeded products are catalogue entries to search and browse,
not data to download.

Rows go in with ``COPY`` (binary, through asyncpg) in chunks, all in one transaction together with one
summary audit event ``catalog.seeded``; the products' triggers keep the facet counts up to date.

Only ``argparse`` is imported at module level, so registering the command keeps ``corpora --help`` fast.
"""

# ruff: noqa: RUF001 - the Chinese texts use Chinese (full-width) punctuation

from __future__ import annotations

import argparse
import dataclasses
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.audit.service import AuditContext

CHUNK = 5_000

# Demo providers created when no --org is given: (slug, name, weight). Weights are skewed like a real
# marketplace, where a few large providers list most of the catalogue.
DEMO_ORGS: tuple[tuple[str, str, int], ...] = (
    ("demo-huaxia-data", "华夏数据 Huaxia Data", 18),
    ("demo-bluefin-analytics", "Bluefin Analytics", 12),
    ("demo-changjiang-media", "长江传媒语料 Changjiang Media", 10),
    ("demo-medcorpus", "MedCorpus Health Data", 8),
    ("demo-lexis-cn", "律典法律数据 Lexis CN", 7),
    ("demo-openfields", "OpenFields Foundation", 6),
    ("demo-jinghua-finance", "京华金融信息 Jinghua Finance", 6),
    ("demo-roadsense", "RoadSense Mobility", 5),
    ("demo-shangpin-retail", "尚品零售数据 Shangpin Retail", 5),
    ("demo-eduverse", "EduVerse Learning", 4),
    ("demo-gridwise-energy", "GridWise Energy", 4),
    ("demo-zhizao-industrial", "智造工业数据 Zhizao Industrial", 3),
    ("demo-civic-records", "Civic Records Office", 3),
    ("demo-xingchen-science", "星辰科研数据 Xingchen Science", 3),
    ("demo-polyglot-labs", "Polyglot Labs", 2),
    ("demo-nordic-speech", "Nordic Speech Archive", 2),
    ("demo-sakura-text", "Sakura Text Works", 1),
    ("demo-hangang-data", "Hangang Data", 1),
)

# industry: (Chinese topics, English topics, tags)
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "finance": (
        (
            "金融新闻",
            "上市公司公告",
            "券商研究报告",
            "银行客服对话",
            "保险理赔记录",
            "财经评论",
            "基金招募说明书",
            "信贷审批文本",
        ),
        (
            "financial news",
            "earnings call transcripts",
            "annual reports",
            "bank customer-service dialogues",
            "insurance claims",
            "market commentary",
            "fund prospectuses",
            "credit memos",
        ),
        ("finance", "金融", "news", "filings", "banking"),
    ),
    "healthcare": (
        ("电子病历", "医患问诊对话", "医学影像报告", "药品说明书", "临床试验摘要", "中医古籍", "护理记录"),
        (
            "electronic health records",
            "doctor-patient dialogues",
            "radiology reports",
            "drug labels",
            "clinical trial abstracts",
            "traditional medicine texts",
            "nursing notes",
        ),
        ("healthcare", "医疗", "clinical", "medical", "phi-removed"),
    ),
    "transport": (
        ("交通事故报告", "网约车订单", "港口物流单据", "航班延误记录", "自动驾驶路测", "道路监控", "铁路调度日志"),
        (
            "traffic incident reports",
            "ride-hailing trips",
            "port logistics documents",
            "flight delay records",
            "autonomous driving road tests",
            "road surveillance footage",
            "railway dispatch logs",
        ),
        ("transport", "交通", "mobility", "logistics", "driving"),
    ),
    "retail": (
        ("电商商品评论", "客服聊天记录", "商品标题与描述", "门店销售流水", "直播带货文本", "用户搜索日志"),
        (
            "e-commerce product reviews",
            "customer chat transcripts",
            "product listings",
            "point-of-sale transactions",
            "live-stream shopping scripts",
            "shopper search logs",
        ),
        ("retail", "零售", "e-commerce", "reviews", "sentiment"),
    ),
    "education": (
        ("中小学试题", "课堂录音", "作文批改", "教材全文", "在线课程字幕", "学术论文摘要"),
        (
            "K-12 exam questions",
            "classroom recordings",
            "essay feedback",
            "textbook full texts",
            "online course subtitles",
            "academic abstracts",
        ),
        ("education", "教育", "exams", "textbooks", "k12"),
    ),
    "media": (
        ("新闻稿件", "短视频字幕", "播客转录", "影视剧本", "网络小说", "社交媒体帖子"),
        (
            "news articles",
            "short-video subtitles",
            "podcast transcripts",
            "screenplays",
            "web novels",
            "social media posts",
        ),
        ("media", "传媒", "news", "subtitles", "social"),
    ),
    "legal": (
        ("裁判文书", "合同范本", "法律法规", "律师咨询问答", "专利文本", "仲裁案例"),
        (
            "court judgments",
            "contract templates",
            "statutes and regulations",
            "legal Q&A",
            "patent texts",
            "arbitration cases",
        ),
        ("legal", "法律", "contracts", "case-law", "patents"),
    ),
    "manufacturing": (
        ("设备维修工单", "质检图像", "工艺规程", "传感器时序", "供应链单据", "安全生产报告"),
        (
            "maintenance work orders",
            "quality inspection images",
            "process specifications",
            "sensor time series",
            "supply-chain documents",
            "plant safety reports",
        ),
        ("manufacturing", "制造", "industrial", "quality", "iot"),
    ),
    "energy": (
        ("电网调度日志", "光伏发电数据", "油气勘探报告", "风电机组告警", "用电负荷曲线"),
        (
            "grid dispatch logs",
            "solar generation data",
            "oil and gas exploration reports",
            "wind turbine alarms",
            "electricity load curves",
        ),
        ("energy", "能源", "grid", "renewables", "power"),
    ),
    "government": (
        ("政务公开文件", "政府工作报告", "市民热线工单", "统计年鉴", "政策解读"),
        (
            "government gazettes",
            "government work reports",
            "citizen hotline tickets",
            "statistical yearbooks",
            "policy explainers",
        ),
        ("government", "政务", "public-sector", "open-data", "policy"),
    ),
    "science": (
        ("科研论文全文", "实验记录", "天文观测", "基因序列注释", "气象观测", "化学反应数据"),
        (
            "research papers",
            "lab notebooks",
            "astronomical observations",
            "gene annotations",
            "weather observations",
            "chemical reactions",
        ),
        ("science", "科研", "papers", "research", "stem"),
    ),
    "general": (
        ("百科词条", "网页文本", "问答社区", "开放域对话", "多语种平行语料", "指令微调数据"),
        (
            "encyclopedia entries",
            "web text",
            "community Q&A",
            "open-domain dialogues",
            "parallel corpora",
            "instruction-tuning data",
        ),
        ("general", "通用", "web", "dialogue", "instructions"),
    ),
}

# modality: (Chinese suffixes, English nouns, weight)
MODALITIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], int]] = {
    "text": (("语料", "数据集", "语料库"), ("Corpus", "Text Dataset", "Text Collection"), 50),
    "image": (("图像数据集", "图片库"), ("Image Dataset", "Image Collection"), 12),
    "audio": (("语音数据集", "音频语料"), ("Speech Dataset", "Audio Corpus"), 12),
    "video": (("视频数据集", "视频片段库"), ("Video Dataset", "Video Clips"), 8),
    "tabular": (("结构化数据", "数据表"), ("Tabular Dataset", "Structured Records"), 10),
    "multimodal": (("多模态数据集", "图文对"), ("Multimodal Dataset", "Image-Text Pairs"), 8),
}

# (languages, weight); Chinese-language products get Chinese text, bilingual ones both.
LANGUAGE_SETS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("zh-Hans",), 34),
    (("en",), 30),
    (("en", "zh-Hans"), 15),
    (("zh-Hant",), 4),
    (("ja",), 4),
    (("en", "ja"), 3),
    (("ko",), 3),
    (("de",), 2),
    (("fr",), 2),
    (("es",), 2),
    (("ar",), 1),
)
LANGUAGE_NAMES = {"ja": "Japanese", "ko": "Korean", "de": "German", "fr": "French", "es": "Spanish", "ar": "Arabic"}

# access: (weight, licences with weights)
ACCESS: dict[str, tuple[int, tuple[tuple[str, int], ...]]] = {
    "open": (
        45,
        (
            ("CC-BY-4.0", 30),
            ("CC0-1.0", 10),
            ("CC-BY-SA-4.0", 12),
            ("ODC-By-1.0", 5),
            ("CDLA-Permissive-2.0", 5),
            ("Apache-2.0", 5),
            ("MIT", 3),
            ("CC-BY-NC-4.0", 20),
            ("ODbL-1.0", 5),
            ("PDDL-1.0", 5),
        ),
    ),
    "gated": (
        35,
        (
            ("CC-BY-NC-4.0", 30),
            ("CC-BY-NC-SA-4.0", 20),
            ("CC-BY-ND-4.0", 10),
            ("CC-BY-NC-ND-4.0", 20),
            ("CC-BY-4.0", 20),
        ),
    ),
    "paid": (20, (("CC-BY-NC-ND-4.0", 40), ("CC-BY-NC-4.0", 30), ("CC-BY-4.0", 20), ("CDLA-Sharing-1.0", 10))),
}

ZH_QUALIFIERS = ("", "", "高质量", "精标注", "脱敏", "多轮", "大规模", "行业级", "精选")
EN_QUALIFIERS = ("", "", "Curated", "Annotated", "De-identified", "Multi-turn", "Large-scale", "Expert")
ZH_REGIONS = ("", "", "", "长三角", "粤港澳大湾区", "京津冀", "华南", "西部", "全国", "上海", "深圳", "香港")
EN_REGIONS = ("", "", "", "Asia-Pacific", "European", "North American", "Global", "Nordic", "Latin American")
ZH_SOURCES = ("公开网页", "合作机构授权数据", "政府开放数据平台", "自有业务系统", "用户授权贡献", "出版社授权稿件")
EN_SOURCES = (
    "public web pages",
    "partner licensed archives",
    "open government data portals",
    "in-house systems",
    "consented user contributions",
    "publisher-licensed articles",
)
ZH_LABELS = ("实体标注", "情感标注", "意图标注", "质量评分", "多级分类", "问答对构建")
EN_LABELS = ("entity labels", "sentiment labels", "intent labels", "quality scores", "topic taxonomy", "QA pairs")
ZH_USES = ("大模型预训练", "指令微调", "检索增强生成", "模型评测", "信息抽取", "情感分析", "智能客服", "风险识别")
EN_USES = (
    "pretraining",
    "instruction tuning",
    "retrieval-augmented generation",
    "model evaluation",
    "information extraction",
    "sentiment analysis",
    "customer-service assistants",
    "risk detection",
)
SOURCE_KINDS = ("licensed", "public_web_crawl", "open_government_data", "user_contributed_consent", "public_domain")


def _weighted(options: Sequence[tuple[Any, int]]) -> tuple[list[Any], list[int]]:
    values = [value for value, _ in options]
    cumulative, total = [], 0
    for _, weight in options:
        total += weight
        cumulative.append(total)
    return values, cumulative


@dataclasses.dataclass
class SeedResult:
    products: int
    orgs: list[str]
    run: str
    first_listed_seq: int | None
    last_listed_seq: int | None
    seconds: float


class CatalogueGenerator:
    """Deterministic for a given ``seed``: product rows and their published version rows."""

    def __init__(self, org_ids: Sequence[tuple[uuid.UUID, int]], *, run: str, seed: int | None = None) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - demo data, not secrets
        self.run = run
        self.orgs = _weighted(list(org_ids))
        self.industries = list(TOPICS)
        self.modalities = _weighted([(name, spec[2]) for name, spec in MODALITIES.items()])
        self.languages = _weighted(list(LANGUAGE_SETS))
        self.access = _weighted([(name, spec[0]) for name, spec in ACCESS.items()])
        self.licences = {name: _weighted(spec[1]) for name, spec in ACCESS.items()}

    def _pick(self, weighted: tuple[list[Any], list[int]]) -> Any:
        values, cumulative = weighted
        return self.rng.choices(values, cum_weights=cumulative)[0]

    def _zh(self, industry: str, modality: str, topic: int) -> tuple[str, str, str]:
        rng = self.rng
        zh_topics = TOPICS[industry][0]
        name = zh_topics[topic % len(zh_topics)]
        title = f"{rng.choice(ZH_REGIONS)}{rng.choice(ZH_QUALIFIERS)}{name}{rng.choice(MODALITIES[modality][0])}"
        start = rng.randint(2005, 2023)
        end = rng.randint(start, 2025)
        size = rng.randint(1, 900)
        source = rng.choice(ZH_SOURCES)
        summary = (
            f"收录{start}年至{end}年来自{source}的{name}，共约{size}万条，已完成去重、清洗与{rng.choice(ZH_LABELS)}。"
        )
        sentences = [
            f"数据来源于{source}，采集时遵守robots协议与文本和数据挖掘保留声明，保留完整的来源记录。",
            f"清洗流程包括去重、格式规范化和个人信息脱敏，重复率由{rng.randint(8, 40)}%降至{rng.randint(0, 3)}%。",
            f"标注由{rng.randint(5, 120)}名专业标注员完成，双人复核一致率为{rng.randint(86, 99)}%。",
            f"适用于{rng.choice(ZH_USES)}、{rng.choice(ZH_USES)}等场景，提供样例数据供评估。",
            f"每条记录包含标题、正文、发布时间、{rng.choice(ZH_LABELS)}等字段，按月增量更新。",
            f"本数据集覆盖{rng.choice(zh_topics)}与{rng.choice(zh_topics)}等细分主题。",
        ]
        rng.shuffle(sentences)
        description = "".join(sentences[: rng.randint(3, 6)])
        return title, summary, description

    def _en(self, industry: str, modality: str, topic: int, language: str | None) -> tuple[str, str, str]:
        rng = self.rng
        en_topics = TOPICS[industry][1]
        name = en_topics[topic % len(en_topics)]
        words = [rng.choice(EN_REGIONS), rng.choice(EN_QUALIFIERS), name.title(), rng.choice(MODALITIES[modality][1])]
        if language is not None:
            words.insert(0, LANGUAGE_NAMES.get(language, ""))
        title = " ".join(word for word in words if word)
        start = rng.randint(2005, 2023)
        end = rng.randint(start, 2025)
        source = rng.choice(EN_SOURCES)
        summary = (
            f"{rng.randint(10, 9000)}k {name} collected from {source} between {start} and {end}, "
            f"deduplicated and enriched with {rng.choice(EN_LABELS)}."
        )
        sentences = [
            f"Data was collected from {source} honouring robots.txt and text-and-data-mining reservations.",
            f"Cleaning removed near-duplicates (from {rng.randint(8, 40)}% to under {rng.randint(1, 3)}%) "
            "and personal data.",
            f"Labelled by {rng.randint(5, 120)} trained annotators; inter-annotator agreement {rng.randint(86, 99)}%.",
            f"Suited to {rng.choice(EN_USES)} and {rng.choice(EN_USES)}; a sample is available for evaluation.",
            f"Each record has a title, body, timestamp and {rng.choice(EN_LABELS)}; updated monthly.",
            f"Covers {rng.choice(en_topics)} and {rng.choice(en_topics)}.",
        ]
        rng.shuffle(sentences)
        description = " ".join(sentences[: rng.randint(3, 6)])
        return title, summary, description

    def rows(self, count: int, start: int = 0) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """``count`` (product, version) row pairs: products in the column order of ``PRODUCT_COLUMNS`` but for
        the last, ``uses``, which the caller adds from the licence; versions as (id, product id, licence,
        provenance)."""
        from catalog.terms import product_terms

        rng = self.rng
        for index in range(start, start + count):
            industry = rng.choice(self.industries)
            modality = self._pick(self.modalities)
            languages: tuple[str, ...] = self._pick(self.languages)
            access = self._pick(self.access)
            topic = rng.randrange(16)
            chinese = any(tag.startswith("zh") for tag in languages)
            english = "en" in languages
            if chinese and english:
                zh, en = self._zh(industry, modality, topic), self._en(industry, modality, topic, None)
                title = f"{zh[0]} | {en[0]}"[:200]
                summary, description = f"{zh[1]} {en[1]}", f"{zh[2]}\n\n{en[2]}"
            elif chinese:
                title, summary, description = self._zh(industry, modality, topic)
            else:
                other = None if english else languages[0]
                title, summary, description = self._en(industry, modality, topic, other)
            tags = list(dict.fromkeys([*rng.sample(TOPICS[industry][2], 3), modality]))
            product_id = uuid.uuid4()
            product = (
                product_id,
                self._pick(self.orgs),
                f"{industry}-{modality}-{self.run}-{index:07d}",
                title,
                summary,
                description,
                industry,
                modality,
                list(languages),
                tags,
                access,
                "published",
                product_terms(title, summary, description, tags),
            )
            kind = rng.choice(SOURCE_KINDS)
            provenance = {
                "sources": [{"kind": kind, "name": title[:120], "collected_from": "2024-01-01"}],
                "activities": [
                    {"stage": "collect", "description": "collection from the named source"},
                    {
                        "stage": "clean",
                        "tool": "dedup",
                        "description": "near-duplicate removal and PII scrubbing",
                        "metrics": {"dedup_rate": round(rng.uniform(0.02, 0.4), 3)},
                    },
                ],
            }
            version = (
                uuid.uuid4(),
                product_id,
                self._pick(self.licences[access]),
                provenance,
            )
            yield product, version


PRODUCT_COLUMNS = (
    "id",
    "org_id",
    "slug",
    "title",
    "summary",
    "description",
    "industry",
    "modality",
    "languages",
    "tags",
    "access",
    "status",
    "search_terms",
    "uses",
)
VERSION_COLUMNS = (
    "id",
    "product_id",
    "version",
    "major",
    "minor",
    "patch",
    "changelog",
    "licence_id",
    "provenance",
    "state",
    "manifest_digest",
    "submitted_at",
    "published_at",
)


async def _provider_orgs(session: AsyncSession, org_slug: str | None) -> list[tuple[uuid.UUID, str, int]]:
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import insert

    from app.accounts.models import Organization
    from app.errors import forbidden, not_found

    if org_slug is not None:
        org = await session.scalar(select(Organization).where(Organization.slug == org_slug))
        if org is None:
            raise not_found(f"organisation '{org_slug}'")
        if org.kind not in ("provider", "both"):
            raise forbidden(f"'{org_slug}' is a buyer organisation; only providers publish products")
        return [(org.id, org.slug, 1)]
    await session.execute(
        insert(Organization)
        .values([{"id": uuid.uuid4(), "slug": slug, "name": name, "kind": "provider"} for slug, name, _ in DEMO_ORGS])
        .on_conflict_do_nothing(index_elements=["slug"])
    )
    weights = {slug: weight for slug, _, weight in DEMO_ORGS}
    rows = (
        await session.execute(select(Organization.id, Organization.slug).where(Organization.slug.in_(weights)))
    ).all()
    return [(org_id, slug, weights[slug]) for org_id, slug in sorted(rows, key=lambda row: row[1])]


async def seed_catalogue(
    session: AsyncSession,
    context: AuditContext,
    *,
    products: int,
    org_slug: str | None = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Insert ``products`` synthetic published products in the session's transaction (the caller commits)."""
    import asyncio
    import json

    from sqlalchemy import select

    from app.audit import service as audit
    from app.db import utcnow
    from app.errors import invalid
    from catalog.models import Product
    from catalog.service import manifest_digest

    if products < 1:
        raise invalid("products", "seed at least one product")
    started = time.perf_counter()
    orgs = await _provider_orgs(session, org_slug)
    run = uuid.uuid4().hex[:6]
    generator = CatalogueGenerator([(org_id, weight) for org_id, _, weight in orgs], run=run, seed=seed)
    raw = await (await session.connection()).get_raw_connection()
    connection: Any = raw.driver_connection  # asyncpg.Connection: COPY is not part of the DB-API
    # A larger GIN pending list turns many small merges of new search terms into a few big ones.
    await connection.execute("SET LOCAL gin_pending_list_limit = '64MB'")
    await connection.execute("SET LOCAL work_mem = '256MB'")
    now = utcnow()
    digest = manifest_digest([])
    # Each product goes in with the uses its version's licence permits: the versions' trigger (migration 0007)
    # then finds nothing to change, instead of rewriting every product row just copied.
    # Distinct and in code-point order, as the trigger stores them (COLLATE "C").
    uses_of = {row["id"]: sorted(set(row["uses"])) for row in await connection.fetch("SELECT id, uses FROM licences")}
    Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]

    def build(start: int, size: int) -> Rows:
        product_rows, version_rows = [], []
        for product, (version_id, product_id, licence, provenance) in generator.rows(size, start=start):
            product_rows.append((*product, uses_of[licence]))
            version_rows.append(
                (
                    version_id,
                    product_id,
                    "1.0.0",
                    1,
                    0,
                    0,
                    "first release",
                    licence,
                    json.dumps(provenance),  # SQLAlchemy's asyncpg codec takes jsonb as JSON text
                    "published",
                    digest,
                    now,
                    now,
                )
            )
        return product_rows, version_rows

    # The next chunk is generated in a thread while PostgreSQL takes in the current one.
    done = 0
    first_id: uuid.UUID | None = None
    last_id: uuid.UUID | None = None
    pending: asyncio.Future[Rows] = asyncio.ensure_future(asyncio.to_thread(build, 0, min(CHUNK, products)))
    while done < products:
        product_rows, version_rows = await pending
        size = len(product_rows)
        if done + size < products:
            pending = asyncio.ensure_future(asyncio.to_thread(build, done + size, min(CHUNK, products - done - size)))
        first_id = first_id or product_rows[0][0]
        last_id = product_rows[-1][0]
        await connection.copy_records_to_table("products", records=product_rows, columns=PRODUCT_COLUMNS)
        await connection.copy_records_to_table("product_versions", records=version_rows, columns=VERSION_COLUMNS)
        done += size
        if progress is not None:
            progress(done)
    result = SeedResult(
        products=products,
        orgs=[slug for _, slug, _ in orgs],
        run=run,
        first_listed_seq=await session.scalar(select(Product.listed_seq).where(Product.id == first_id)),
        last_listed_seq=await session.scalar(select(Product.listed_seq).where(Product.id == last_id)),
        seconds=time.perf_counter() - started,
    )
    await audit.record(
        session,
        context,
        "catalog.seeded",
        org_id=orgs[0][0] if org_slug is not None else None,
        target_type="catalog",
        target_id=run,
        details={
            "products": products,
            "orgs": result.orgs,
            "seed": seed,
            "first_listed_seq": result.first_listed_seq,
            "last_listed_seq": result.last_listed_seq,
        },
    )
    return result


async def seed_database(
    database_url: str,
    context: AuditContext,
    *,
    products: int,
    org_slug: str | None = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Seed in one transaction of a fresh engine, then vacuum and analyze what changed."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.pool import NullPool

    from app.db import async_url

    # Not the service's engine: its 30-second statement timeout is for requests, and merging the new search
    # terms into the GIN index or vacuuming a million products takes longer.
    engine = create_async_engine(
        async_url(database_url), poolclass=NullPool, connect_args={"timeout": 10, "command_timeout": 3600}
    )
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            result = await seed_catalogue(
                session, context, products=products, org_slug=org_slug, seed=seed, progress=progress
            )
        # VACUUM merges the GIN index's pending list of new terms (which every search would otherwise read
        # through) and marks pages all-visible; ANALYZE refreshes the statistics of the most common terms.
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM (ANALYZE) products"))
            await autocommit.execute(text("VACUUM (ANALYZE) product_versions"))
        return result
    finally:
        await engine.dispose()


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], handler: Callable[..., int]) -> None:
    """Register ``corpora seed`` on the CLI's subcommands, run by ``handler``."""
    seed = commands.add_parser(
        "seed",
        help="fill the catalogue with synthetic published products (demonstrations, benchmarks)",
        description=(
            "Insert N synthetic products with mixed Chinese and English text across all industries, "
            "modalities and languages, each with a published version, in bulk and in one transaction; "
            "writes one 'catalog.seeded' audit event."
        ),
    )
    seed.add_argument("--products", type=int, required=True, metavar="N", help="how many products to create")
    seed.add_argument(
        "--org",
        metavar="SLUG",
        help="the provider organisation that lists them (default: demo providers, created when missing)",
    )
    seed.add_argument("--seed", type=int, help="random seed, for the same catalogue on every run")
    seed.set_defaults(handler=handler)
