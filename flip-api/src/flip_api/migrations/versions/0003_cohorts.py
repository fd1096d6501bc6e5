"""Cohort queries (versioned per project), per-trust cohort results and approval snapshots.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:39:01.909197
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cohort_queries',
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('sql', sa.Text(), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_cohort_queries_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_cohort_queries_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cohort_queries')),
    sa.UniqueConstraint('project_id', 'version', name=op.f('uq_cohort_queries_project_id'))
    )
    op.create_table('cohort_results',
    sa.Column('query_id', sa.Uuid(), nullable=False),
    sa.Column('trust_id', sa.Uuid(), nullable=False),
    sa.Column('task_id', sa.Uuid(), nullable=True),
    sa.Column('state', sa.Enum('PENDING', 'DONE', 'SUPPRESSED', 'ERROR', 'CANCELLED', name='cohort_result_state'), nullable=False),
    sa.Column('min_k', sa.Integer(), nullable=False),
    sa.Column('record_count', sa.Integer(), nullable=True),
    sa.Column('suppressed', sa.Boolean(), nullable=False),
    sa.Column('statistics', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_detail', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['query_id'], ['cohort_queries.id'], name=op.f('fk_cohort_results_query_id_cohort_queries'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['trust_tasks.id'], name=op.f('fk_cohort_results_task_id_trust_tasks'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['trust_id'], ['trusts.id'], name=op.f('fk_cohort_results_trust_id_trusts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cohort_results')),
    sa.UniqueConstraint('query_id', 'trust_id', name=op.f('uq_cohort_results_query_id'))
    )
    op.create_index(op.f('ix_cohort_results_task_id'), 'cohort_results', ['task_id'], unique=False)
    op.create_index(op.f('ix_cohort_results_trust_id'), 'cohort_results', ['trust_id'], unique=False)
    op.create_table('cohort_snapshots',
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('trust_id', sa.Uuid(), nullable=False),
    sa.Column('query_id', sa.Uuid(), nullable=False),
    sa.Column('task_id', sa.Uuid(), nullable=True),
    sa.Column('persons', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_cohort_snapshots_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['query_id'], ['cohort_queries.id'], name=op.f('fk_cohort_snapshots_query_id_cohort_queries'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['trust_tasks.id'], name=op.f('fk_cohort_snapshots_task_id_trust_tasks'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['trust_id'], ['trusts.id'], name=op.f('fk_cohort_snapshots_trust_id_trusts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cohort_snapshots')),
    sa.UniqueConstraint('project_id', 'trust_id', name=op.f('uq_cohort_snapshots_project_id'))
    )
    op.create_index(op.f('ix_cohort_snapshots_trust_id'), 'cohort_snapshots', ['trust_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_cohort_snapshots_trust_id'), table_name='cohort_snapshots')
    op.drop_table('cohort_snapshots')
    op.drop_index(op.f('ix_cohort_results_trust_id'), table_name='cohort_results')
    op.drop_index(op.f('ix_cohort_results_task_id'), table_name='cohort_results')
    op.drop_table('cohort_results')
    op.drop_table('cohort_queries')
    op.execute("DROP TYPE IF EXISTS cohort_result_state")
