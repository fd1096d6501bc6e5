-- FLIP trust OMOP database: the OMOP CDM 5.4 tables FLIP uses, the MI-CDM imaging extension and
-- the indexes cohort queries need.  Applied by flip_omop.schema.create_schema(); every statement
-- is idempotent (IF NOT EXISTS), so applying it again changes nothing.
--
-- Column names, order and types follow the OHDSI CDM 5.4 PostgreSQL DDL.  Primary keys are
-- declared with the tables; the secondary indexes at the end are dropped and rebuilt by the bulk
-- loader around each load (building an index once is much cheaper than maintaining it per row).

CREATE SCHEMA IF NOT EXISTS omop;

CREATE TABLE IF NOT EXISTS omop.person (
    person_id                   integer     NOT NULL,
    gender_concept_id           integer     NOT NULL,
    year_of_birth               integer     NOT NULL,
    month_of_birth              integer     NULL,
    day_of_birth                integer     NULL,
    birth_datetime              timestamp   NULL,
    race_concept_id             integer     NOT NULL,
    ethnicity_concept_id        integer     NOT NULL,
    location_id                 integer     NULL,
    provider_id                 integer     NULL,
    care_site_id                integer     NULL,
    person_source_value         varchar(50) NULL,
    gender_source_value         varchar(50) NULL,
    gender_source_concept_id    integer     NULL,
    race_source_value           varchar(50) NULL,
    race_source_concept_id      integer     NULL,
    ethnicity_source_value      varchar(50) NULL,
    ethnicity_source_concept_id integer     NULL,
    CONSTRAINT xpk_person PRIMARY KEY (person_id)
);

CREATE TABLE IF NOT EXISTS omop.observation_period (
    observation_period_id         integer NOT NULL,
    person_id                     integer NOT NULL,
    observation_period_start_date date    NOT NULL,
    observation_period_end_date   date    NOT NULL,
    period_type_concept_id        integer NOT NULL,
    CONSTRAINT xpk_observation_period PRIMARY KEY (observation_period_id)
);

CREATE TABLE IF NOT EXISTS omop.visit_occurrence (
    visit_occurrence_id           integer     NOT NULL,
    person_id                     integer     NOT NULL,
    visit_concept_id              integer     NOT NULL,
    visit_start_date              date        NOT NULL,
    visit_start_datetime          timestamp   NULL,
    visit_end_date                date        NOT NULL,
    visit_end_datetime            timestamp   NULL,
    visit_type_concept_id         integer     NOT NULL,
    provider_id                   integer     NULL,
    care_site_id                  integer     NULL,
    visit_source_value            varchar(50) NULL,
    visit_source_concept_id       integer     NULL,
    admitted_from_concept_id      integer     NULL,
    admitted_from_source_value    varchar(50) NULL,
    discharged_to_concept_id      integer     NULL,
    discharged_to_source_value    varchar(50) NULL,
    preceding_visit_occurrence_id integer     NULL,
    CONSTRAINT xpk_visit_occurrence PRIMARY KEY (visit_occurrence_id)
);

CREATE TABLE IF NOT EXISTS omop.condition_occurrence (
    condition_occurrence_id       integer     NOT NULL,
    person_id                     integer     NOT NULL,
    condition_concept_id          integer     NOT NULL,
    condition_start_date          date        NOT NULL,
    condition_start_datetime      timestamp   NULL,
    condition_end_date            date        NULL,
    condition_end_datetime        timestamp   NULL,
    condition_type_concept_id     integer     NOT NULL,
    condition_status_concept_id   integer     NULL,
    stop_reason                   varchar(20) NULL,
    provider_id                   integer     NULL,
    visit_occurrence_id           integer     NULL,
    visit_detail_id               integer     NULL,
    condition_source_value        varchar(50) NULL,
    condition_source_concept_id   integer     NULL,
    condition_status_source_value varchar(50) NULL,
    CONSTRAINT xpk_condition_occurrence PRIMARY KEY (condition_occurrence_id)
);

CREATE TABLE IF NOT EXISTS omop.drug_exposure (
    drug_exposure_id             integer     NOT NULL,
    person_id                    integer     NOT NULL,
    drug_concept_id              integer     NOT NULL,
    drug_exposure_start_date     date        NOT NULL,
    drug_exposure_start_datetime timestamp   NULL,
    drug_exposure_end_date       date        NOT NULL,
    drug_exposure_end_datetime   timestamp   NULL,
    verbatim_end_date            date        NULL,
    drug_type_concept_id         integer     NOT NULL,
    stop_reason                  varchar(20) NULL,
    refills                      integer     NULL,
    quantity                     numeric     NULL,
    days_supply                  integer     NULL,
    sig                          text        NULL,
    route_concept_id             integer     NULL,
    lot_number                   varchar(50) NULL,
    provider_id                  integer     NULL,
    visit_occurrence_id          integer     NULL,
    visit_detail_id              integer     NULL,
    drug_source_value            varchar(50) NULL,
    drug_source_concept_id       integer     NULL,
    route_source_value           varchar(50) NULL,
    dose_unit_source_value       varchar(50) NULL,
    CONSTRAINT xpk_drug_exposure PRIMARY KEY (drug_exposure_id)
);

CREATE TABLE IF NOT EXISTS omop.procedure_occurrence (
    procedure_occurrence_id     integer     NOT NULL,
    person_id                   integer     NOT NULL,
    procedure_concept_id        integer     NOT NULL,
    procedure_date              date        NOT NULL,
    procedure_datetime          timestamp   NULL,
    procedure_end_date          date        NULL,
    procedure_end_datetime      timestamp   NULL,
    procedure_type_concept_id   integer     NOT NULL,
    modifier_concept_id         integer     NULL,
    quantity                    integer     NULL,
    provider_id                 integer     NULL,
    visit_occurrence_id         integer     NULL,
    visit_detail_id             integer     NULL,
    procedure_source_value      varchar(50) NULL,
    procedure_source_concept_id integer     NULL,
    modifier_source_value       varchar(50) NULL,
    CONSTRAINT xpk_procedure_occurrence PRIMARY KEY (procedure_occurrence_id)
);

CREATE TABLE IF NOT EXISTS omop.measurement (
    measurement_id                integer     NOT NULL,
    person_id                     integer     NOT NULL,
    measurement_concept_id        integer     NOT NULL,
    measurement_date              date        NOT NULL,
    measurement_datetime          timestamp   NULL,
    measurement_time              varchar(10) NULL,
    measurement_type_concept_id   integer     NOT NULL,
    operator_concept_id           integer     NULL,
    value_as_number               numeric     NULL,
    value_as_concept_id           integer     NULL,
    unit_concept_id               integer     NULL,
    range_low                     numeric     NULL,
    range_high                    numeric     NULL,
    provider_id                   integer     NULL,
    visit_occurrence_id           integer     NULL,
    visit_detail_id               integer     NULL,
    measurement_source_value      varchar(50) NULL,
    measurement_source_concept_id integer     NULL,
    unit_source_value             varchar(50) NULL,
    unit_source_concept_id        integer     NULL,
    value_source_value            varchar(50) NULL,
    measurement_event_id          integer     NULL,
    meas_event_field_concept_id   integer     NULL,
    CONSTRAINT xpk_measurement PRIMARY KEY (measurement_id)
);

CREATE TABLE IF NOT EXISTS omop.observation (
    observation_id                integer     NOT NULL,
    person_id                     integer     NOT NULL,
    observation_concept_id        integer     NOT NULL,
    observation_date              date        NOT NULL,
    observation_datetime          timestamp   NULL,
    observation_type_concept_id   integer     NOT NULL,
    value_as_number               numeric     NULL,
    value_as_string               varchar(60) NULL,
    value_as_concept_id           integer     NULL,
    qualifier_concept_id          integer     NULL,
    unit_concept_id               integer     NULL,
    provider_id                   integer     NULL,
    visit_occurrence_id           integer     NULL,
    visit_detail_id               integer     NULL,
    observation_source_value      varchar(50) NULL,
    observation_source_concept_id integer     NULL,
    unit_source_value             varchar(50) NULL,
    qualifier_source_value        varchar(50) NULL,
    value_source_value            varchar(50) NULL,
    observation_event_id          integer     NULL,
    obs_event_field_concept_id    integer     NULL,
    CONSTRAINT xpk_observation PRIMARY KEY (observation_id)
);

-- CDM 5.4 gives death no primary key; one row per person is the convention (indexed below).
CREATE TABLE IF NOT EXISTS omop.death (
    person_id               integer     NOT NULL,
    death_date              date        NOT NULL,
    death_datetime          timestamp   NULL,
    death_type_concept_id   integer     NULL,
    cause_concept_id        integer     NULL,
    cause_source_value      varchar(50) NULL,
    cause_source_concept_id integer     NULL
);

CREATE TABLE IF NOT EXISTS omop.concept (
    concept_id       integer      NOT NULL,
    concept_name     varchar(255) NOT NULL,
    domain_id        varchar(20)  NOT NULL,
    vocabulary_id    varchar(20)  NOT NULL,
    concept_class_id varchar(20)  NOT NULL,
    standard_concept varchar(1)   NULL,
    concept_code     varchar(50)  NOT NULL,
    valid_start_date date         NOT NULL,
    valid_end_date   date         NOT NULL,
    invalid_reason   varchar(1)   NULL,
    CONSTRAINT xpk_concept PRIMARY KEY (concept_id)
);

-- MI-CDM (medical imaging extension, OHDSI Medical Imaging WG).  FLIP adds accession_id (the key the
-- PACS is queried by; unique per trust) and the two source values an imaging ETL keeps verbatim.
CREATE TABLE IF NOT EXISTS omop.image_occurrence (
    image_occurrence_id        integer       NOT NULL,
    person_id                  integer       NOT NULL,
    procedure_occurrence_id    integer       NOT NULL,
    visit_occurrence_id        integer       NULL,
    anatomic_site_concept_id   integer       NULL,
    wadors_uri                 varchar(1024) NULL,
    local_path                 varchar(1024) NULL,
    image_occurrence_date      date          NOT NULL,
    image_study_uid            varchar(250)  NOT NULL,
    image_series_uid           varchar(250)  NOT NULL,
    modality_concept_id        integer       NOT NULL,
    accession_id               text          NOT NULL,
    modality_source_value      varchar(50)   NULL,
    anatomic_site_source_value varchar(50)   NULL,
    CONSTRAINT xpk_image_occurrence PRIMARY KEY (image_occurrence_id),
    CONSTRAINT uq_image_occurrence_accession_id UNIQUE (accession_id)
);

CREATE TABLE IF NOT EXISTS omop.image_feature (
    image_feature_id                     integer       NOT NULL,
    person_id                            integer       NOT NULL,
    image_occurrence_id                  integer       NOT NULL,
    image_feature_event_field_concept_id integer       NULL,
    image_feature_event_id               integer       NULL,
    image_feature_concept_id             integer       NOT NULL,
    image_feature_type_concept_id        integer       NOT NULL,
    image_finding_concept_id             integer       NULL,
    image_finding_id                     integer       NULL,
    anatomic_site_concept_id             integer       NULL,
    alg_system                           varchar(1024) NULL,
    alg_datetime                         timestamp     NULL,
    CONSTRAINT xpk_image_feature PRIMARY KEY (image_feature_id)
);

COMMENT ON COLUMN omop.image_occurrence.accession_id IS
    'FLIP: the study''s DICOM AccessionNumber (0008,0050) in the trust''s PACS; unique within the trust';
COMMENT ON COLUMN omop.image_occurrence.modality_source_value IS
    'FLIP: DICOM Modality (0008,0060) as recorded, e.g. CT or MR';
COMMENT ON COLUMN omop.image_occurrence.anatomic_site_source_value IS
    'FLIP: the body part as the trust records it (BodyPartExamined or the order''s site)';

-- Secondary indexes: person_id everywhere (every cohort query joins on it) and the concept ids
-- cohort queries filter on.
CREATE INDEX IF NOT EXISTS idx_person_gender_concept_id ON omop.person (gender_concept_id);
CREATE INDEX IF NOT EXISTS idx_observation_period_person_id ON omop.observation_period (person_id);
CREATE INDEX IF NOT EXISTS idx_visit_occurrence_person_id ON omop.visit_occurrence (person_id);
CREATE INDEX IF NOT EXISTS idx_visit_occurrence_visit_concept_id ON omop.visit_occurrence (visit_concept_id);
CREATE INDEX IF NOT EXISTS idx_condition_occurrence_person_id ON omop.condition_occurrence (person_id);
CREATE INDEX IF NOT EXISTS idx_condition_occurrence_concept_id ON omop.condition_occurrence (condition_concept_id);
CREATE INDEX IF NOT EXISTS idx_drug_exposure_person_id ON omop.drug_exposure (person_id);
CREATE INDEX IF NOT EXISTS idx_drug_exposure_concept_id ON omop.drug_exposure (drug_concept_id);
CREATE INDEX IF NOT EXISTS idx_procedure_occurrence_person_id ON omop.procedure_occurrence (person_id);
CREATE INDEX IF NOT EXISTS idx_procedure_occurrence_concept_id ON omop.procedure_occurrence (procedure_concept_id);
CREATE INDEX IF NOT EXISTS idx_measurement_person_id ON omop.measurement (person_id);
CREATE INDEX IF NOT EXISTS idx_measurement_concept_id ON omop.measurement (measurement_concept_id);
CREATE INDEX IF NOT EXISTS idx_observation_person_id ON omop.observation (person_id);
CREATE INDEX IF NOT EXISTS idx_observation_concept_id ON omop.observation (observation_concept_id);
CREATE INDEX IF NOT EXISTS idx_death_person_id ON omop.death (person_id);
CREATE INDEX IF NOT EXISTS idx_concept_code ON omop.concept (concept_code);
CREATE INDEX IF NOT EXISTS idx_concept_vocabulary_id ON omop.concept (vocabulary_id);
CREATE INDEX IF NOT EXISTS idx_concept_domain_id ON omop.concept (domain_id);
CREATE INDEX IF NOT EXISTS idx_image_occurrence_person_id ON omop.image_occurrence (person_id);
CREATE INDEX IF NOT EXISTS idx_image_occurrence_procedure_occurrence_id
    ON omop.image_occurrence (procedure_occurrence_id);
CREATE INDEX IF NOT EXISTS idx_image_occurrence_modality_concept_id ON omop.image_occurrence (modality_concept_id);
CREATE INDEX IF NOT EXISTS idx_image_occurrence_anatomic_site_concept_id
    ON omop.image_occurrence (anatomic_site_concept_id);
CREATE INDEX IF NOT EXISTS idx_image_feature_person_id ON omop.image_feature (person_id);
CREATE INDEX IF NOT EXISTS idx_image_feature_image_occurrence_id ON omop.image_feature (image_occurrence_id);
CREATE INDEX IF NOT EXISTS idx_image_feature_concept_id ON omop.image_feature (image_feature_concept_id);

-- FLIP's per-person summary for cohort statistics: sex, year of birth and imaging modalities in one
-- narrow row per person, so that the data-access-api reads one small relation instead of joining
-- person and image_occurrence for every cohort.  Not part of the CDM; rebuilt after each load with
-- `flip trust omop refresh` (the data-access-api falls back to live joins while it is unpopulated).
CREATE MATERIALIZED VIEW IF NOT EXISTS omop.flip_person_summary AS
    SELECT p.person_id, p.gender_concept_id, p.year_of_birth, m.modalities
    FROM omop.person p
    LEFT JOIN (
        SELECT person_id, array_agg(DISTINCT modality_source_value ORDER BY modality_source_value) AS modalities
        FROM omop.image_occurrence
        WHERE modality_source_value IS NOT NULL
        GROUP BY person_id
    ) m ON m.person_id = p.person_id
WITH NO DATA;
CREATE UNIQUE INDEX IF NOT EXISTS idx_flip_person_summary_person_id ON omop.flip_person_summary (person_id);
