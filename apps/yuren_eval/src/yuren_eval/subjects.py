"""The subjects of MMLU and C-Eval and the categories the seed's tables average over.

MMLU's four categories are Hendrycks et al.'s; C-Eval's four categories and
its eight-subject hard set are the benchmark authors'. Subject names are the
datasets' own (the hub configs and the CSV file names).
"""

from __future__ import annotations

MMLU_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
    "Social Sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ),
    "STEM": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ),
    "Other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
        "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ),
}  # fmt: skip

CEVAL_CATEGORIES: dict[str, tuple[str, ...]] = {
    "STEM": (
        "computer_network", "operating_system", "computer_architecture", "college_programming", "college_physics",
        "college_chemistry", "advanced_mathematics", "probability_and_statistics", "discrete_mathematics",
        "electrical_engineer", "metrology_engineer", "high_school_mathematics", "high_school_physics",
        "high_school_chemistry", "high_school_biology", "middle_school_mathematics", "middle_school_biology",
        "middle_school_physics", "middle_school_chemistry", "veterinary_medicine",
    ),
    "Social Sciences": (
        "college_economics", "business_administration", "marxism", "mao_zedong_thought", "education_science",
        "teacher_qualification", "high_school_politics", "high_school_geography", "middle_school_politics",
        "middle_school_geography",
    ),
    "Humanities": (
        "modern_chinese_history", "ideological_and_moral_cultivation", "logic", "law",
        "chinese_language_and_literature", "art_studies", "professional_tour_guide", "legal_professional",
        "high_school_chinese", "high_school_history", "middle_school_history",
    ),
    "Others": (
        "civil_servant", "sports_science", "plant_protection", "basic_medicine", "clinical_medicine",
        "urban_and_rural_planner", "accountant", "fire_engineer", "environmental_impact_assessment_engineer",
        "tax_accountant", "physician",
    ),
}  # fmt: skip

# C-Eval Hard: the mathematics, physics and chemistry subjects that need reasoning.
CEVAL_HARD = (
    "advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
    "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics",
)  # fmt: skip


def subjects(categories: dict[str, tuple[str, ...]]) -> list[str]:
    """Every subject of a benchmark, sorted."""
    return sorted(subject for members in categories.values() for subject in members)


def category_of(categories: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Subject -> its category."""
    return {subject: category for category, members in categories.items() for subject in members}
